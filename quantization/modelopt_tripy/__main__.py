import sys

from quantization.modelopt_tripy.route import main

sys.exit(main())
