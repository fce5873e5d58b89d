from gpuprobe.daemon.cli import main

raise SystemExit(main())
