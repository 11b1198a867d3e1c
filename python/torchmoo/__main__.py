from torchmoo.cli import main

main()
