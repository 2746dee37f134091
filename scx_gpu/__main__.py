from scx_gpu.cli import main

main()
