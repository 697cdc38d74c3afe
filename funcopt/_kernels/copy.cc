// The kernels' common entry points alone (parallel.h): `funcopt_copy`, a multi-threaded
// memcpy that funcopt.torch uses to write the XLA path's new parameters into torch's memory
// on torch's own threads, and the control-word handler.

#include "xla/ffi/api/ffi.h"
#include "parallel.h"

FUNCOPT_DEFINE_COMMON_ENTRY_POINTS()
