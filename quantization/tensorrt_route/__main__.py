from quantization.tensorrt_route.route import main

raise SystemExit(main())
