"""The control plane: loads and owns the BPF scheduler (libbpf via ctypes)."""
