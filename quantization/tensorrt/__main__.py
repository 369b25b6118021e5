import sys

from quantization.tensorrt.route import main

sys.exit(main())
