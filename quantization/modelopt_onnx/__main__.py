import sys

from quantization.modelopt_onnx.route import main

sys.exit(main())
