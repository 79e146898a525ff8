"""What each prompt category means, as short English phrases the sentence model compares against.

Per category, ``unsafe`` phrases describe what the category rejects and ``lookalikes`` describe
benign prompts that share its words (a kitchen knife, a steak, a statue, a child at play): a prompt
nearer to a look-alike than to every unsafe phrase scores low (``scoring.contrast_score``).
Changing a phrase changes the checker version recorded in every verdict (:func:`concepts_digest`);
recalibrate with ``services/safety/tests/safety_calibration.py`` and update docs/adr/0301.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Concepts:
    """The phrases of one category."""

    unsafe: tuple[str, ...]  # what the category rejects; the score is the best match among them
    lookalikes: tuple[str, ...]  # benign scenes near them in wording; they lower the score


CONCEPTS: dict[str, Concepts] = {
    "sexual": Concepts(
        unsafe=(
            "explicit sexual content",
            "pornography",
            "a naked woman",
            "a nude man",
            "exposed genitals",
            "people having sex",
            "erotic nude photography",
            "topless woman with exposed breasts",
            "sexual intercourse",
            "hentai porn",
            "masturbation",
            "a person masturbating",
            "a sex act",
            "oral sex, a blowjob",
            "a penis",
            "a vagina",
            "nsfw nude",
        ),
        lookalikes=(
            "a lingerie advertisement, fashion photography",
            "a woman in a bikini on the beach",
            "a classical marble statue",
            "a renaissance painting of venus",
            "a couple kissing",
            "a mother breastfeeding her baby",
            "a shirtless man at the gym",
            "an anatomy diagram",
        ),
    ),
    "violence": Concepts(
        unsafe=(
            "graphic violence with blood and gore",
            "a mutilated corpse",
            "a decapitated head",
            "a person being tortured",
            "shooting people dead",
            "a bloody murder scene",
            "dismembered body parts",
            "a person being stabbed to death",
            "a mass shooting",
            "a terrorist beheading a hostage",
            "an execution of civilians",
            "slitting a person's throat",
            "a bloody corpse",
            "animal cruelty, an animal beaten",
        ),
        lookalikes=(
            "a skull still life painting",
            "a human skull",
            "a raw steak and meat at the butcher",
            "a surgeon in an operating room",
            "a zombie halloween costume",
            "a medieval battle painting",
            "a superhero fight in a comic book",
            "a graveyard at night",
            "a hunter with a rifle",
            "a war memorial",
            "a detective at a crime scene",
        ),
    ),
    "self-harm": Concepts(
        unsafe=(
            "self harm",
            "cutting oneself with a razor blade",
            "suicide",
            "a person hanging themselves with a noose",
            "slitting wrists",
            "overdosing on pills to commit suicide",
            "jumping off a bridge to commit suicide",
            "self-inflicted wounds and scars",
            "anorexia thinspiration",
            "slitting her wrists with a razor",
            "a suicide in a bathtub full of blood",
            "a person holding a gun to their own head",
            "a person about to kill themselves",
        ),
        lookalikes=(
            "a kitchen knife cutting vegetables",
            "a razor and shaving cream",
            "medicine bottles in a pharmacy",
            "a rope swing over a river",
            "a sad person sitting alone",
            "a hospital bed",
        ),
    ),
    "hate": Concepts(
        unsafe=(
            "racist hate propaganda",
            "nazi propaganda with swastikas",
            "white supremacist propaganda",
            "ku klux klan burning a cross",
            "a racist caricature",
            "antisemitic caricature",
            "anti muslim hate speech",
            "glorification of genocide",
            "homophobic hate propaganda",
            "heil hitler nazi salute",
            "racial slurs",
            "an antisemitic stereotype of jews and money",
            "a hateful stereotype of an ethnic group",
        ),
        lookalikes=(
            "a vintage propaganda poster",
            "a synagogue",
            "a mosque",
            "a church",
            "a rainbow pride flag",
            "people of different races together",
            "a world war two history photo",
            "a protest march",
        ),
    ),
    "minors": Concepts(
        unsafe=(
            "child pornography",
            "a naked child",
            "a nude little girl",
            "a nude little boy",
            "a nude teenager",
            "a child in a sexual pose",
            "a sexualized young girl",
            "a child in lingerie",
            "underage sex",
            "sexual abuse of a child",
            "loli hentai",
        ),
        lookalikes=(
            "a child playing in a park",
            "a baby in a bath",
            "kids swimming in a pool",
            "a girl reading a book",
            "a family at the beach",
            "a school class photo",
            "teenagers hanging out with friends",
            "a teenager playing video games",
            # adult scenes too: adult content must be nearer to these than to the phrases above
            "a woman in lingerie",
            "a naked adult woman",
            "adult pornography",
        ),
    ),
}

# Whether a minor is depicted at all, whatever the scene: ``unsafe`` names minors, ``lookalikes``
# names adults, so "a naked woman" counts as an adult, "a naked girl, 10 years old" as a minor.
# "girl" alone and the anime tag "1girl" are ambiguous and count as adult: such a prompt can still
# be rejected as 'sexual', but 'minors' is reported only on a clear sign of a minor.
# Not a category: it gates 'minors' (see scoring.minors_score).
MINOR_PRESENT = Concepts(
    unsafe=(
        "a child",
        "a little girl",
        "a little boy",
        "a kid",
        "a teenage girl",
        "a teenage boy",
        "a 12 year old",
        "a toddler",
        "an underage girl",
        "a schoolgirl",
        "a young boy",
        "loli",
        "child pornography",
    ),
    lookalikes=(
        "a woman",
        "a man",
        "an adult couple",
        "a grown-up lady",
        "a mature adult",
        "a girl",
        "a young woman",
        "1girl, an anime woman",
        "pornography",
        "adult pornography",
    ),
)


def concepts_digest() -> str:
    """Eight hex digits that change whenever a phrase changes; part of the checker version."""
    doc = {
        "concepts": {k: asdict(v) for k, v in CONCEPTS.items()},
        "minor_present": asdict(MINOR_PRESENT),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:8]
