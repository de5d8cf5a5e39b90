import sys, numpy as np, torch
sys.path.insert(0, "cutlass_sm110")
import devbuild; devbuild.load()
from triforce.runtime.policy import Policy
from triforce.workload import STANDARD, random_observation, random_noise, cosine
from triforce.runtime.observation import check_observation
cfgname = STANDARD["config"]
b = Policy.load(f"synthetic:{cfgname}", cfgname, plan="b", recipe="h100_fast", calibration=4)
eng = b.backend
cfg = eng.cfg
rng = np.random.default_rng(0)
obs = check_observation(random_observation(cfg, rng, STANDARD["real_views"], STANDARD["prompt_tokens"]), cfg)
noise = random_noise(cfg, rng)
want = eng.infer(obs, noise)
for launch in ("plain", "dependent"):
    eng.set_denoise_launch(launch)
    for folds in (("o",), ("down",), ("o", "down")):
        eng.set_norm_fold(folds)
        try:
            got = eng.infer(obs, noise); torch.cuda.synchronize()
            print(launch, folds, "cosine", cosine(got, want), flush=True)
        except Exception as e:
            print(launch, folds, "FAILED", repr(e)[:300], flush=True); raise
