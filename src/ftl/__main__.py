"""`python -m ftl ...`"""

from ftl.cli import main

if __name__ == "__main__":
    main()
