import sys

from quantization.onnxruntime.route import main

sys.exit(main())
