"""Write the small instruction data sets in this folder from the hand-written tables below.

    python examples/data/instruct/make_instruct.py

alpaca.jsonl: single-turn instruction/input/output rows (format: alpaca).
chat.jsonl:   multi-turn conversations with a system message (format: messages), built from the same
              facts, two or three questions each.
The output is deterministic: the same script always writes the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# --- Jane Austen's four novels in examples/data/corpus (facts checked against the texts) ----------
NOVEL_OF = {
    "Elizabeth Bennet": "Pride and Prejudice",
    "Mr. Darcy": "Pride and Prejudice",
    "Jane Bennet": "Pride and Prejudice",
    "Mr. Bingley": "Pride and Prejudice",
    "Mr. Collins": "Pride and Prejudice",
    "Lady Catherine de Bourgh": "Pride and Prejudice",
    "Mr. Wickham": "Pride and Prejudice",
    "Lydia Bennet": "Pride and Prejudice",
    "Charlotte Lucas": "Pride and Prejudice",
    "Elinor Dashwood": "Sense and Sensibility",
    "Marianne Dashwood": "Sense and Sensibility",
    "Edward Ferrars": "Sense and Sensibility",
    "Colonel Brandon": "Sense and Sensibility",
    "John Willoughby": "Sense and Sensibility",
    "Lucy Steele": "Sense and Sensibility",
    "Mrs. Jennings": "Sense and Sensibility",
    "Anne Elliot": "Persuasion",
    "Captain Wentworth": "Persuasion",
    "Sir Walter Elliot": "Persuasion",
    "Lady Russell": "Persuasion",
    "Louisa Musgrove": "Persuasion",
    "Admiral Croft": "Persuasion",
    "Catherine Morland": "Northanger Abbey",
    "Henry Tilney": "Northanger Abbey",
    "Eleanor Tilney": "Northanger Abbey",
    "General Tilney": "Northanger Abbey",
    "Isabella Thorpe": "Northanger Abbey",
    "John Thorpe": "Northanger Abbey",
}
MARRIES = {
    "Elizabeth Bennet": "Mr. Darcy",
    "Jane Bennet": "Mr. Bingley",
    "Lydia Bennet": "Mr. Wickham",
    "Charlotte Lucas": "Mr. Collins",
    "Elinor Dashwood": "Edward Ferrars",
    "Marianne Dashwood": "Colonel Brandon",
    "Lucy Steele": "Robert Ferrars",
    "Anne Elliot": "Captain Wentworth",
    "Catherine Morland": "Henry Tilney",
}
FACTS = [
    ("What is the name of Mr. Darcy's estate?", "Pemberley, in Derbyshire."),
    ("What is the name of the Bennet family's home?", "Longbourn, in Hertfordshire."),
    ("Which house does Mr. Bingley rent?", "Netherfield Park."),
    ("Who is Mr. Darcy's aunt?", "Lady Catherine de Bourgh."),
    ("Where does Lady Catherine de Bourgh live?", "At Rosings Park."),
    ("Who is Mr. Darcy's younger sister?", "Georgiana Darcy."),
    ("How many daughters do Mr. and Mrs. Bennet have?", "Five."),
    ("Who is the eldest Bennet sister?", "Jane Bennet."),
    ("Who will inherit Longbourn?", "Mr. Collins, the Bennets' cousin."),
    ("Who is Mr. Bingley's sister?", "Caroline Bingley."),
    ("Which Bennet sister runs away with Mr. Wickham?", "Lydia Bennet."),
    ("How does Pride and Prejudice begin?", "It is a truth universally acknowledged."),
    ("Who are Elinor Dashwood's sisters?", "Marianne and Margaret Dashwood."),
    ("Where do the Dashwoods move after leaving Norland?", "To Barton Cottage in Devonshire."),
    ("Who lets Barton Cottage to the Dashwoods?", "Sir John Middleton."),
    ("Whom does John Willoughby marry?", "Miss Grey, for her fortune."),
    ("Who is secretly engaged to Edward Ferrars?", "Lucy Steele."),
    ("Who is Elinor Dashwood's half-brother?", "John Dashwood."),
    ("Who is Anne Elliot's father?", "Sir Walter Elliot."),
    ("Who persuaded Anne Elliot to give up Captain Wentworth?", "Lady Russell."),
    ("What is the Elliot family's estate?", "Kellynch Hall."),
    ("Who rents Kellynch Hall?", "Admiral Croft and his wife."),
    ("Where does Louisa Musgrove fall?", "On the Cobb at Lyme."),
    ("In which city does much of Persuasion take place?", "In Bath."),
    ("What is Captain Wentworth's profession?", "He is a naval officer."),
    ("With whom does Catherine Morland go to Bath?", "With Mr. and Mrs. Allen."),
    ("What is Northanger Abbey?", "The home of the Tilney family."),
    ("Who is Henry Tilney's father?", "General Tilney."),
    ("Who is Henry Tilney's sister?", "Eleanor Tilney."),
    ("Who is Isabella Thorpe's brother?", "John Thorpe."),
    ("What kind of novels does Catherine Morland love?", "Gothic novels."),
    ("Which Gothic novel does Catherine Morland read?", "The Mysteries of Udolpho."),
    ("Who wrote Pride and Prejudice?", "Jane Austen."),
    ("Who wrote Persuasion?", "Jane Austen."),
    ("When was Jane Austen born?", "In 1775."),
    ("When did Jane Austen die?", "In 1817."),
    ("When was Pride and Prejudice published?", "In 1813."),
    ("When was Sense and Sensibility published?", "In 1811."),
]

# --- general knowledge -----------------------------------------------------------------------------
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "England": "London", "Ireland": "Dublin", "Scotland": "Edinburgh", "Austria": "Vienna",
    "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm", "Denmark": "Copenhagen",
    "Finland": "Helsinki", "Poland": "Warsaw", "Hungary": "Budapest", "Egypt": "Cairo",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Canada": "Ottawa", "Mexico": "Mexico City",
    "Peru": "Lima", "Chile": "Santiago", "Kenya": "Nairobi", "Russia": "Moscow", "Turkey": "Ankara",
    "Belgium": "Brussels", "the Netherlands": "Amsterdam", "Switzerland": "Bern",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "day": "night", "fast": "slow", "happy": "sad",
    "light": "dark", "open": "closed", "early": "late", "full": "empty", "old": "young", "rich": "poor",
    "strong": "weak", "high": "low", "wet": "dry", "hard": "soft", "long": "short", "loud": "quiet",
    "first": "last", "true": "false", "win": "lose", "buy": "sell", "push": "pull", "inside": "outside",
}  # fmt: skip
PLURALS = {
    "cat": "cats", "dog": "dogs", "child": "children", "mouse": "mice", "foot": "feet", "tooth": "teeth",
    "box": "boxes", "woman": "women", "man": "men", "leaf": "leaves", "knife": "knives", "city": "cities",
    "sheep": "sheep", "goose": "geese", "story": "stories", "church": "churches", "wolf": "wolves",
    "lady": "ladies",
}  # fmt: skip
COLOURS = {
    "the sky on a clear day": "blue", "grass": "green", "snow": "white", "a ripe banana": "yellow",
    "coal": "black", "a ripe tomato": "red", "an orange": "orange", "milk": "white", "a lemon": "yellow",
    "a fresh leaf": "green",
}  # fmt: skip
YOUNG = {
    "cat": "a kitten", "dog": "a puppy", "cow": "a calf", "sheep": "a lamb", "horse": "a foal",
    "duck": "a duckling", "frog": "a tadpole", "goat": "a kid", "bear": "a cub", "swan": "a cygnet",
}  # fmt: skip
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]  # fmt: skip
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def qa() -> list[tuple[str, str, str]]:
    """(instruction, input, output) triples, grouped by topic."""
    rows = []
    for who, novel in NOVEL_OF.items():
        rows.append((f"In which novel does {who} appear?", "", f"In {novel}."))
    for who, spouse in MARRIES.items():
        rows.append((f"Whom does {who} marry?", "", f"{spouse}."))
    rows += [(q, "", a) for q, a in FACTS]
    for country, city in CAPITALS.items():
        rows.append((f"What is the capital of {country}?", "", f"{city}."))
    for word, opposite in OPPOSITES.items():
        rows.append(("Give the opposite of this word.", word, f"{opposite.capitalize()}."))
    for word, plural in PLURALS.items():
        rows.append(("What is the plural of this word?", word, f"{plural.capitalize()}."))
    for thing, colour in COLOURS.items():
        rows.append((f"What colour is {thing}?", "", f"{colour.capitalize()}."))
    for animal, young in YOUNG.items():
        rows.append((f"What is a young {animal} called?", "", f"{young[0].upper()}{young[1:]}."))
    for i, day in enumerate(DAYS):
        rows.append((f"Which day comes after {day}?", "", f"{DAYS[(i + 1) % 7]}."))
    for i, month in enumerate(MONTHS):
        rows.append((f"Which month comes after {month}?", "", f"{MONTHS[(i + 1) % 12]}."))
    for a in range(1, 6):
        for b in range(1, 6):
            rows.append((f"What is {a} plus {b}?", "", f"{a + b}."))
    for n in range(11):
        rows.append(("Write this number as a word.", str(n), f"{NUMBER_WORDS[n].capitalize()}."))
    return rows


SYSTEM = "You are a helpful assistant. Answer in a few words."


def main() -> None:
    rows = qa()
    with open(HERE / "alpaca.jsonl", "w", encoding="utf-8") as fh:
        for instruction, inp, output in rows:
            fh.write(json.dumps({"instruction": instruction, "input": inp, "output": output}) + "\n")
    rng = random.Random(1813)
    order = list(range(len(rows)))
    rng.shuffle(order)
    with open(HERE / "chat.jsonl", "w", encoding="utf-8") as fh:
        at = 0
        while at + 3 <= len(order) and at < 180:
            turns = 2 + (at // 3) % 2  # two or three questions per conversation
            messages = [{"role": "system", "content": SYSTEM}]
            for i in order[at : at + turns]:
                instruction, inp, output = rows[i]
                messages.append({"role": "user", "content": f"{instruction}\n\n{inp}" if inp else instruction})
                messages.append({"role": "assistant", "content": output})
            fh.write(json.dumps({"messages": messages}) + "\n")
            at += turns
    print(f"wrote {len(rows)} rows to alpaca.jsonl and {at} questions in conversations to chat.jsonl")


if __name__ == "__main__":
    main()
