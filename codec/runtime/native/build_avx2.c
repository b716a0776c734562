/* The avx2 build of the frame engine (setup.py): the module shell and the engine in one
 * translation unit, so that each build compiles to its own object file. */
#include "module.c"
#include "frame_engine.c"
