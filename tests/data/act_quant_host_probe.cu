// Runs the per-element math of cutlass_sm110/csrc/act_quant.cu (its __host__ __device__ helpers, compiled from the
// very translation unit) on the host, so tests/test_act_quant_host.py can compare it bit for bit with the CPU
// reference in triforce/quant/formats.py without a GPU.
// usage: act_quant_host_probe DIR G ROWS COLS
//   reads  DIR/x.f32 (float32, a multiple of 16 values), DIR/x.bf16 (bf16 bits, a multiple of 8 values)
//   writes DIR/codes.u8 + DIR/sf.u8 (NVFP4 of x.f32 with global scale G, 16-element blocks),
//          DIR/fp8.u8 (saturated e4m3 of x.f32), DIR/unpacked.f32 (x.bf16 as float32),
//          DIR/offsets.i64 (swizzled scale offset of every (row, kblock) of a [ROWS, COLS] operand, row-major)
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "act_quant.cu"

using namespace triforce::act_quant;

template <typename T>
std::vector<T> read_all(const std::string& path) {
  std::vector<T> data;
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) { perror(path.c_str()); exit(2); }
  T v;
  while (fread(&v, sizeof(T), 1, f) == 1) data.push_back(v);
  fclose(f);
  return data;
}

template <typename T>
void write_all(const std::string& path, const std::vector<T>& data) {
  FILE* f = fopen(path.c_str(), "wb");
  if (!f || fwrite(data.data(), sizeof(T), data.size(), f) != data.size()) { perror(path.c_str()); exit(2); }
  fclose(f);
}

int main(int argc, char** argv) {
  if (argc != 5) { fprintf(stderr, "usage: %s DIR G ROWS COLS\n", argv[0]); return 2; }
  const std::string dir = argv[1];
  const float g = strtof(argv[2], nullptr);
  const int rows = atoi(argv[3]), cols = atoi(argv[4]);

  const auto x = read_all<float>(dir + "/x.f32");
  std::vector<uint8_t> codes, sf, fp8;
  for (size_t b = 0; b + kBlock <= x.size(); b += kBlock) {
    uint8_t block_sf;
    const uint2 packed = nvfp4_block(&x[b], g, div_rn(g, kE2M1Max), block_sf);
    for (int i = 0; i < 8; ++i) codes.push_back(uint8_t((i < 4 ? packed.x : packed.y) >> (8 * (i % 4))));
    sf.push_back(block_sf);
  }
  for (size_t c = 0; c + kVecElems <= x.size(); c += kVecElems) {
    const uint2 q = e4m3x8(&x[c]);
    for (int i = 0; i < 8; ++i) fp8.push_back(uint8_t((i < 4 ? q.x : q.y) >> (8 * (i % 4))));
  }
  const auto bf16 = read_all<uint16_t>(dir + "/x.bf16");
  std::vector<float> unpacked(bf16.size());
  for (size_t c = 0; c + kVecElems <= bf16.size(); c += kVecElems) {
    Vec v;
    memcpy(&v, &bf16[c], sizeof(v));
    unpack_bf16x8(v, &unpacked[c]);
  }
  std::vector<int64_t> offsets;
  const int kblocks = cols / kBlock, padded = round_up(kblocks, kSfAtomCols);
  for (int r = 0; r < rows; ++r)
    for (int kb = 0; kb < kblocks; ++kb) offsets.push_back(int64_t(sf_offset(r, kb, padded)));

  write_all(dir + "/codes.u8", codes);
  write_all(dir + "/sf.u8", sf);
  write_all(dir + "/fp8.u8", fp8);
  write_all(dir + "/unpacked.f32", unpacked);
  write_all(dir + "/offsets.i64", offsets);
  return 0;
}
