from zeroverse.cli import main

main()
