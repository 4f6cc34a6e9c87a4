from knowpack.cli import main

main()
