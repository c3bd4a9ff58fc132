"""Entry point of ``python -m unrolled.bilevel.study``."""

from unrolled.bilevel.study import main

main()
