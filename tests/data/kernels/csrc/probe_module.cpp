// The extension module triforce_kernels._C of the test package: an empty module (the build, not the ops, is tested).
#include <Python.h>

static struct PyModuleDef probe_module = {PyModuleDef_HEAD_INIT, "_C", "build test module", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&probe_module); }
