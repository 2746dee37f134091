# scx-gpu: `make demo` runs the main job, `make test` runs every test.
# Both install what they need first (`make setup`, as root on Debian 12).

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
CLANG   ?= clang-19
STRIP   ?= llvm-strip-19
BPF_OUT := scx_gpu/bpf
BPF_SRC := $(wildcard sched/bpf/*.bpf.c tracer/*.bpf.c)
BPF_OBJ := $(patsubst %.bpf.c,$(BPF_OUT)/%.bpf.o,$(notdir $(BPF_SRC)))
BPF_HDR := $(wildcard sched/bpf/*.h tracer/*.h)
BPF_CFLAGS := -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_x86 -Wall -Werror \
	-fms-extensions -Wno-microsoft-anon-tag -Isched/bpf -Itracer
SETUP_STAMP := $(VENV)/.setup-stamp
WL      := scx_gpu/workloads
PROGRAMS := $(WL)/bin/launcher $(WL)/bin/spinners $(WL)/bin/libcuda.so.1 \
	$(WL)/bin/libcudart.so.13 $(WL)/bin/wakebench
CFLAGS  ?= -O2 -g -Wall -Wextra -Werror

vpath %.bpf.c sched/bpf tracer

.PHONY: setup bpf programs build vmlinux-h lint test test-host demo bench bench-sched bench-tracer wheel clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml scripts/setup-debian.sh
	sh scripts/setup-debian.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,analysis]'
	touch $@

bpf: $(BPF_OBJ)

$(BPF_OUT)/%.bpf.o: %.bpf.c $(BPF_HDR) | $(SETUP_STAMP)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@
	$(STRIP) -g $@

# The synthetic workload: a launcher and a stub CUDA driver (no GPU needed).
programs: $(PROGRAMS)

# CET-built like a driver (endbr64 at each entry), which Debian's gcc does not default to.
$(WL)/bin/libcuda.so.1: $(WL)/cuda_stub.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -fcf-protection=full -shared -fPIC -Wl,-soname,libcuda.so.1 -o $@ $<

# Linked against the stub driver, found beside it at run time.
$(WL)/bin/libcudart.so.13: $(WL)/cudart_stub.c $(WL)/bin/libcuda.so.1
	$(CC) $(CFLAGS) -shared -fPIC -Wl,-soname,libcudart.so.13 -Wl,-rpath,'$$ORIGIN' \
		-o $@ $< $(WL)/bin/libcuda.so.1

$(WL)/bin/launcher: $(WL)/launcher.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -pthread -o $@ $< -ldl

# The task storm of the scheduler's VM tests.
$(WL)/bin/spinners: $(WL)/spinners.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -pthread -o $@ $<

# The wake-up microbenchmark (`scx-gpu bench wakeup`).
$(WL)/bin/wakebench: $(WL)/wakebench.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -pthread -o $@ $<

build: bpf programs

# Regenerate sched/bpf/vmlinux.h from the test kernel's BTF (committed).
vmlinux-h: setup
	$(BIN)/scx-gpu vm kernel --vmlinux-h sched/bpf/vmlinux.h

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup build lint
	$(BIN)/pytest

# The quick loop: everything that needs no VM.
test-host: setup build
	$(BIN)/pytest -m "not vm"

# The main job on the built-in default: in the sched_ext test VM, the synthetic
# GPU workload under no noise and CPU noise, for stock, batch-idle and scx-gpu
# (noise declared batch and undeclared), traced; the compare table at the end.
# Results (Parquet, traces) and a Markdown report land in demo-results/.
DEMO_POLICIES := stock,batch-idle,scx-gpu,scx-gpu-undeclared
demo: setup build
	rm -rf demo-results
	$(BIN)/scx-gpu vm run --timeout 1200 --out demo-results -- sh -c \
		'COLUMNS=160 scx-gpu bench run --workload synthetic --noise none,cpu \
		--policy $(DEMO_POLICIES) --reps 1 --duration 5 -o /job/out/run >/dev/null'
	$(BIN)/scx-gpu bench compare demo-results/run
	$(BIN)/scx-gpu bench compare demo-results/run --format markdown -o demo-results/report.md
# Scheduler vs the mainline knobs, in the test VM: a result directory
# (`scx-gpu bench compare bench-results/bench-sched`), its verdict in checks.json.
BENCH_REPS ?= 1
bench-sched: setup build
	rm -rf bench-results/bench-sched
	$(BIN)/scx-gpu vm run --timeout 3000 --out bench-results -- \
		scx-gpu bench sched --reps $(BENCH_REPS) -o /job/out/bench-sched

# The tracer's reader throughput, overhead and analysis time, on the host kernel:
# the overhead's cells in bench-tracer/, the rest in bench-tracer/tracer.json.
bench-tracer: setup build
	rm -rf bench-tracer
	$(BIN)/scx-gpu bench tracer -o bench-tracer

bench: bench-sched bench-tracer

wheel: setup build
	$(BIN)/pip wheel --no-deps --no-build-isolation -q -w dist .

clean:
	rm -rf $(BPF_OUT)/*.bpf.o $(WL)/bin dist build *.egg-info
