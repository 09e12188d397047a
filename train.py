"""The seed's entry point, kept for compatibility: `python train.py --annotations A --data D --epochs 25
--trans_type mel_spec` runs exactly `urbansound train` with the same arguments."""

import sys

from urbansound.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
