from gpuprobe.daemon.service.cli import main

raise SystemExit(main())
