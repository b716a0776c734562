/* The Python module shell of a frame-engine build (setup.py): the engine's functions are called
 * through ctypes (codec/runtime/native/__init__.py), so the module itself is empty; it exists
 * so that setuptools builds, names and installs the shared library like any extension. It
 * also records which frame_engine.c the library was built from (CODEC_SOURCE_HASH, set by
 * setup.py), so a library left from an older source is never used with newer Python code. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define CODEC_JOIN(a, b) a##b
#define CODEC_INIT(name) CODEC_JOIN(PyInit_, name)
#define CODEC_STR2(x) #x
#define CODEC_STR(x) CODEC_STR2(x)

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, CODEC_STR(CODEC_MODULE),
                                    "The native frame engine (its C functions are called through ctypes).", -1,
                                    NULL};

#ifndef CODEC_SOURCE_HASH
#define CODEC_SOURCE_HASH "unknown"
#endif

/* The sha256 (hex) of the frame_engine.c this library was compiled from. */
const char *codec_source_hash(void) { return CODEC_SOURCE_HASH; }

PyMODINIT_FUNC CODEC_INIT(CODEC_MODULE)(void) { return PyModule_Create(&module); }
