"""Parsers for command-line values shared by the root CLIs (kept free of click)."""

from typing import List


def parse_int_list(text: str) -> List[int]:
    """Parse '1,2,5', '0-3' or a mix like '1,4-6' into a list of ints (ranges inclusive).

    Raises ValueError with a message naming the bad item.
    """
    values: List[int] = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        lo, sep, hi = item.partition("-") if not item.startswith("-") else (item, "", "")
        try:
            if sep:
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                values.extend(range(lo_i, hi_i + 1))
            else:
                values.append(int(item))
        except ValueError:
            raise ValueError(f"'{item}' is not an integer or a range like 0-35") from None
    if not values:
        raise ValueError(f"'{text}' names no integers; use a list like 1,2,5 or a range like 0-35")
    return values


def parse_seed_list(text: str) -> List[int]:
    """parse_int_list for seeds: every value must fit numpy's RandomState (0..2**32-1); ValueError otherwise."""
    seeds = parse_int_list(text)
    bad = [seed for seed in seeds if not 0 <= seed < 2**32]
    if bad:
        raise ValueError(f"seed {bad[0]} is outside 0..{2**32 - 1}")
    return seeds
