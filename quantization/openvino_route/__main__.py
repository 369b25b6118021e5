import sys

from quantization.openvino_route.route import main

sys.exit(main())
