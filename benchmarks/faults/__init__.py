"""Fault and load harnesses, apart from the speed benchmarks one level up: each one attacks a
running mmsearch (kills, hostile files, generated requests, a long soak) and counts what broke,
instead of timing what worked."""
