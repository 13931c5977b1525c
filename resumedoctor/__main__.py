from resumedoctor.cli.app import main

main()
