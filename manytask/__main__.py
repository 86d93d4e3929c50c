"""`python -m manytask ...` is the `manytask` command; torchrun starts it so: torchrun ... -m manytask train ..."""
from .cli import main

main()
