"""`scx-gpu status`: the gpu processes' lines."""

from scx_gpu import status


def test_each_gpu_process_shows_its_gpus_and_their_local_cpus():
    lines = status._gpu_process_lines([
        {"pid": 100, "gpus": [{"minor": 1, "pci": "0000:9a:00.0", "node": 1,
                               "local_cpus": [4, 5, 6, 7, 12]}]},
        {"pid": 200, "gpus": [{"minor": 0, "pci": "0000:18:00.0", "node": None,
                               "local_cpus": []}]},
        {"pid": 300, "gpus": []}])
    assert lines == [
        "  gpu process 100: GPU 1 (0000:9a:00.0, node 1, local CPUs 4-7,12)",
        "  gpu process 200: GPU 0 (0000:18:00.0, node ?, local CPUs ?)",
        "  gpu process 300: no GPU context found"]
