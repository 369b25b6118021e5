import sys

from quantization.torch.route import main

sys.exit(main())
