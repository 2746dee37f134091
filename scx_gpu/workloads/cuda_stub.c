// SPDX-License-Identifier: GPL-2.0
/*
 * A stand-in for the CUDA driver (libcuda.so.1) on machines without a GPU:
 * it exports the driver's launch family with the real signatures, so the
 * scheduler's detector and the tracer probe it exactly as they would probe
 * the real library. Launches return at once; synchronisation sleeps for
 * the time the caller says the "GPU" takes (SCX_GPU_STUB_SYNC_US).
 *
 * The probed entry points have the machine code shape of the real driver's
 * (535: a compare of a global state word with a constant, a conditional
 * branch, a tail jump through a pointer), and the library is built with
 * -fcf-protection, so they start with endbr64 as a CET build's would: the
 * probes meet the instructions they meet on a GPU host.
 */
#include <stdlib.h>
#include <time.h>

typedef int CUresult;
typedef void *CUfunction, *CUstream, *CUgraphExec;
typedef struct CUlaunchConfig_st {
	unsigned int gridDimX, gridDimY, gridDimZ;
	unsigned int blockDimX, blockDimY, blockDimZ;
	unsigned int sharedMemBytes;
	CUstream hStream;
	void *attrs;
	unsigned int numAttrs;
} CUlaunchConfig;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_NOT_INITIALIZED 3
#define EXPORT __attribute__((visibility("default"), noinline))

/* Volatile sink so that no call can be optimised into nothing. */
static volatile unsigned long launches;

static void sleep_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };

	if (us > 0)
		nanosleep(&ts, NULL);
}

EXPORT CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_SUCCESS; }
EXPORT CUresult cuDriverGetVersion(int *v) { *v = 13000; return CUDA_SUCCESS; }

static CUresult launch_kernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
			      unsigned int bx, unsigned int by, unsigned int bz,
			      unsigned int shmem, CUstream stream, void **params, void **extra)
{
	(void)f; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz;
	(void)shmem; (void)stream; (void)params; (void)extra;
	launches++;
	return CUDA_SUCCESS;
}

/* The driver's state word (global, so that the compiler keeps the compare
 * with memory) and the implementations it dispatches to (volatile, so that it
 * keeps the indirect tail jump). */
#define DRIVER_READY 0x321cba00u
__attribute__((visibility("hidden"))) unsigned int scx_stub_driver_state = DRIVER_READY;
static CUresult (*volatile launch_kernel_impl)(CUfunction, unsigned int, unsigned int,
					       unsigned int, unsigned int, unsigned int,
					       unsigned int, unsigned int, CUstream, void **,
					       void **) = launch_kernel;

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
			       unsigned int bx, unsigned int by, unsigned int bz,
			       unsigned int shmem, CUstream stream, void **params, void **extra)
{
	if (scx_stub_driver_state != DRIVER_READY)
		return CUDA_ERROR_NOT_INITIALIZED;
	return launch_kernel_impl(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra);
}

EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
				    unsigned int gz, unsigned int bx, unsigned int by,
				    unsigned int bz, unsigned int shmem, CUstream stream,
				    void **params, void **extra)
{
	return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra);
}

static CUresult launch_kernel_ex(const CUlaunchConfig *config, CUfunction f, void **params,
				 void **extra)
{
	(void)config; (void)f; (void)params; (void)extra;
	launches++;
	return CUDA_SUCCESS;
}

static CUresult (*volatile launch_kernel_ex_impl)(const CUlaunchConfig *, CUfunction, void **,
						  void **) = launch_kernel_ex;

EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params,
				 void **extra)
{
	if (scx_stub_driver_state != DRIVER_READY)
		return CUDA_ERROR_NOT_INITIALIZED;
	return launch_kernel_ex_impl(config, f, params, extra);
}

EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f,
				      void **params, void **extra)
{
	return cuLaunchKernelEx(config, f, params, extra);
}

EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy,
					  unsigned int gz, unsigned int bx, unsigned int by,
					  unsigned int bz, unsigned int shmem, CUstream stream,
					  void **params)
{
	return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, stream, params, NULL);
}

EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
					       unsigned int gz, unsigned int bx, unsigned int by,
					       unsigned int bz, unsigned int shmem,
					       CUstream stream, void **params)
{
	return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, stream, params, NULL);
}

static CUresult graph_launch(CUgraphExec graph, CUstream stream)
{
	(void)graph; (void)stream;
	launches++;
	return CUDA_SUCCESS;
}

static CUresult (*volatile graph_launch_impl)(CUgraphExec, CUstream) = graph_launch;

EXPORT CUresult cuGraphLaunch(CUgraphExec graph, CUstream stream)
{
	if (scx_stub_driver_state != DRIVER_READY)
		return CUDA_ERROR_NOT_INITIALIZED;
	return graph_launch_impl(graph, stream);
}

EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec graph, CUstream stream)
{
	return cuGraphLaunch(graph, stream);
}

static long sync_us(void)
{
	const char *v = getenv("SCX_GPU_STUB_SYNC_US");

	return v ? atol(v) : 0;
}

static CUresult stream_synchronize(CUstream stream)
{
	(void)stream;
	sleep_us(sync_us());
	return CUDA_SUCCESS;
}

static CUresult ctx_synchronize(void)
{
	sleep_us(sync_us());
	return CUDA_SUCCESS;
}

static CUresult (*volatile stream_synchronize_impl)(CUstream) = stream_synchronize;
static CUresult (*volatile ctx_synchronize_impl)(void) = ctx_synchronize;

EXPORT CUresult cuStreamSynchronize(CUstream stream)
{
	if (scx_stub_driver_state != DRIVER_READY)
		return CUDA_ERROR_NOT_INITIALIZED;
	return stream_synchronize_impl(stream);
}

EXPORT CUresult cuCtxSynchronize(void)
{
	if (scx_stub_driver_state != DRIVER_READY)
		return CUDA_ERROR_NOT_INITIALIZED;
	return ctx_synchronize_impl();
}
