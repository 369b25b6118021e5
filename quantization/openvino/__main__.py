import sys

from quantization.openvino.route import main

sys.exit(main())
