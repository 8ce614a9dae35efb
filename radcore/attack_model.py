"""How likely a PIN guesser is to succeed, from the limits radcore enforces.

Two attackers, both online (they can only guess through RADIUS or the portal; the PIN digests
are keyed with a pepper outside LMDB, so a stolen data file does not allow offline guessing):

- **Targeted card**: the attacker knows one card number and guesses its PIN. Every wrong PIN
  counts on the card (RADIUS and portal share the count); after `max_failed_pins` in a row the card
  is locked for `lockout_seconds`. So the attacker gets N guesses per cool-down T, whatever their
  speed or number of lines: N * 86400 / T guesses a day.
- **PIN-only dialing across a series**: on a PIN-only gateway a guess is a bare PIN; it wins if it
  is the PIN of *any* of the `cards` cards reachable that way. No card locks (a wrong guess names no
  card), so only the per-line throttle (`pin_only_throttle_per_minute` unknown PINs per minute per
  (NAS, Calling-Station-Id)) limits the rate: R * 1440 guesses a day per line the attacker controls.
  An attacker who can choose Calling-Station-Id freely controls as many lines as they like; then
  the server's capacity is the limit (pass `lines` accordingly).

PINs are uniform random over 10**L values and the attacker never repeats a guess. The probability of
at least one success in g guesses is 1 - prod_{i<g} (1 - m / (S - i)) for m winning PINs in a space
of S; for g << S this is 1 - (1 - m/S)**g, computed here as 1 - exp(g * log1p(-m/S)) (relative error
below g/S). For the targeted card m = 1 and the exact value is min(1, g/S).

    python -m radcore.attack_model --pin-length 10 --max-failed 5 --lockout 900 --cards 10000
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

DAY = 86_400
YEAR_DAYS = 365


@dataclass(frozen=True, slots=True)
class Odds:
    """The modelled figures; probabilities are of at least one success in the period."""

    pin_length: int
    max_failed_pins: int
    lockout_seconds: int
    throttle_per_minute: int
    cards: int
    lines: int
    targeted_guesses_per_day: float
    targeted_per_day: float
    targeted_per_year: float
    pin_only_guesses_per_day: float
    pin_only_per_day: float
    pin_only_per_year: float
    pin_only_expected_days_to_first_hit: float

    def report(self) -> str:
        head = (f"PIN length {self.pin_length} ({10 ** self.pin_length:.3g} PINs), lockout after "
                f"{self.max_failed_pins} wrong PINs for {self.lockout_seconds} s, PIN-only throttle "
                f"{self.throttle_per_minute}/min per line, {self.lines} line(s), {self.cards} cards")
        targeted = (f"  targeted card : {self.targeted_guesses_per_day:,.0f} guesses/day, "
                    f"P(success) {self.targeted_per_day:.3g}/day, {self.targeted_per_year:.3g}/year")
        pin_only = (f"  PIN-only      : {self.pin_only_guesses_per_day:,.0f} guesses/day, "
                    f"P(success) {self.pin_only_per_day:.3g}/day, {self.pin_only_per_year:.3g}/year, "
                    f"first hit expected after {self.pin_only_expected_days_to_first_hit:,.1f} days")
        return f"{head}\n{targeted}\n{pin_only}"


def success_probability(guesses: float, winners: int, space: int) -> float:
    """P(at least one of `guesses` distinct uniform guesses is one of `winners` PINs in `space`)."""
    if guesses <= 0 or winners <= 0:
        return 0.0
    if winners >= space or guesses >= space - winners + 1:
        return 1.0
    if winners == 1:
        return min(1.0, guesses / space)
    return -math.expm1(guesses * math.log1p(-winners / space))


def guessing_odds(pin_length: int, max_failed_pins: int, lockout_seconds: int, *,
                  throttle_per_minute: int, cards: int, lines: int = 1) -> Odds:
    """The model above. A lockout of 0 s or a throttle of 0 (off) means no limit: the guess rate
    is then whatever the server answers, and the corresponding figures are 1.0 (certain)."""
    if pin_length < 1 or max_failed_pins < 1 or lockout_seconds < 0 or throttle_per_minute < 0:
        raise ValueError("pin_length and max_failed_pins must be >= 1, the others >= 0")
    if cards < 0 or lines < 1:
        raise ValueError("cards must be >= 0 and lines >= 1")
    space = 10 ** pin_length
    targeted = max_failed_pins * DAY / lockout_seconds if lockout_seconds else math.inf
    pin_only = throttle_per_minute * 1440 * lines if throttle_per_minute else math.inf
    per_guess = cards / space
    return Odds(
        pin_length=pin_length, max_failed_pins=max_failed_pins, lockout_seconds=lockout_seconds,
        throttle_per_minute=throttle_per_minute, cards=cards, lines=lines,
        targeted_guesses_per_day=targeted,
        targeted_per_day=success_probability(targeted, 1, space),
        targeted_per_year=success_probability(targeted * YEAR_DAYS, 1, space),
        pin_only_guesses_per_day=pin_only,
        pin_only_per_day=success_probability(pin_only, cards, space),
        pin_only_per_year=success_probability(pin_only * YEAR_DAYS, cards, space),
        pin_only_expected_days_to_first_hit=(1 / (pin_only * per_guess) if pin_only * per_guess
                                             else math.inf),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radcore.attack_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pin-length", type=int, default=10)
    parser.add_argument("--max-failed", type=int, default=5, help="prepaid.max_failed_pins")
    parser.add_argument("--lockout", type=int, default=900, help="prepaid.lockout_seconds")
    parser.add_argument("--throttle", type=int, default=30, help="prepaid.pin_only_throttle_per_minute")
    parser.add_argument("--cards", type=int, default=10_000, help="cards reachable by PIN-only dialing")
    parser.add_argument("--lines", type=int, default=1, help="lines (NAS, Calling-Station-Id) the attacker uses")
    args = parser.parse_args(argv)
    print(guessing_odds(args.pin_length, args.max_failed, args.lockout, throttle_per_minute=args.throttle,
                        cards=args.cards, lines=args.lines).report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
