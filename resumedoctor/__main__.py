from resumedoctor.cli import main

main()
