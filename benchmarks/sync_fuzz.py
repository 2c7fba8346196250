"""`python -m benchmarks.sync_fuzz`: the command issue 19 named for the long model-based sync run;
the harness lives with the other fault harnesses in benchmarks/faults/sync_fuzz.py."""

from benchmarks.faults.sync_fuzz import main

if __name__ == "__main__":
    main()
