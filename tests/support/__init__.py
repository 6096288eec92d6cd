"""Test support shared by the labeling, flows and eval tests: a scripted policy and GSM8K
error injection (tests/support/scripted_policy.py, tests/support/gsm8k_slips.py)."""
