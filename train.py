"""The student project's entry point, kept for compatibility: `python train.py --annotations A --data D
--epochs 25 --trans_type mel_spec` runs `urbansound train --recipe baseline` with the same arguments, so it
keeps the student project's settings (cnn, 64-band log-mel at 44.1 kHz, Adam one-cycle); any flag given
overrides them."""

import sys

from urbansound.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "--recipe", "baseline", *sys.argv[1:]]))
