from retrieval_distill.cli import main

main()
