// The Python module `jdrl_ext._C`. It holds no functions: importing it loads this shared library,
// whose static initializers register the operators with the dispatcher (TORCH_LIBRARY_FRAGMENT in
// each op's folder).
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "jdrl_ext operators (registered with torch.ops)",
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
