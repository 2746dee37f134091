// SPDX-License-Identifier: GPL-2.0
/*
 * A stand-in for the CUDA runtime (libcudart) on machines without a GPU: its
 * launch goes through the driver's cuLaunchKernel, as the real runtime does,
 * so a tracer probing both layers can be checked not to count launches twice.
 */
#include <stddef.h>

typedef struct { unsigned int x, y, z; } dim3;
typedef int cudaError_t;

int cuLaunchKernel(void *f, unsigned int gx, unsigned int gy, unsigned int gz,
		   unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
		   void *stream, void **params, void **extra);
int cuCtxSynchronize(void);

#define EXPORT __attribute__((visibility("default"), noinline))

EXPORT cudaError_t cudaLaunchKernel(const void *func, dim3 grid, dim3 block, void **args,
				    size_t shared_mem, void *stream)
{
	return cuLaunchKernel((void *)func, grid.x, grid.y, grid.z, block.x, block.y, block.z,
			      (unsigned int)shared_mem, stream, args, NULL);
}

EXPORT cudaError_t cudaDeviceSynchronize(void)
{
	return cuCtxSynchronize();
}
