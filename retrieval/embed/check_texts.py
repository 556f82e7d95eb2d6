"""Tweet-like texts for checking a quantized embedder against its fp32 export on this machine.

Written for this (no real tweets are shipped): brand-voice fragments combined by a seeded
generator, with the dataset's `<hyperlink>` / `<mention>` placeholders, hashtags, emoji, numbers
and prices. Fragments recur across texts, so many texts are near-duplicates of others, the case
where int8 rounding most easily reorders neighbours: a strict test of neighbour agreement.
"""

from __future__ import annotations

import random

OPENERS = (
    "Big news!",
    "Heads up:",
    "Just announced:",
    "Good morning!",
    "Happy Monday!",
    "It's finally here.",
    "Reminder:",
    "Breaking:",
    "Thank you!",
    "We did it!",
    "Quick tip:",
    "Fun fact:",
    "Mark your calendars:",
    "ICYMI:",
    "Don't miss it:",
    "Weekend plans?",
    "New today:",
    "Update:",
    "We hear you.",
    "Psst...",
    "Attention shoppers:",
    "Calling all creators!",
    "Last chance!",
    "Save the date:",
    "Guess what?",
)
BODIES = (
    "our new spring collection is now available in stores and online",
    "we're hiring engineers, designers and data scientists in Austin and Dublin",
    "the app update brings dark mode, faster checkout and offline maps",
    "our team volunteered at the local food bank this weekend",
    "quarterly revenue grew 12% year over year, ahead of expectations",
    "the keynote livestream starts tomorrow at 10am PT",
    "free shipping on every order over $50 through Sunday",
    "we're opening our 100th store in Manila this Saturday",
    "the limited edition burger is back for two weeks only",
    "our scholarship program is accepting applications until March 31",
    "the outage has been resolved and all services are running normally",
    "meet the nurses who keep our community healthy every day",
    "we planted 1 million trees with your help this year",
    "the new laptop is lighter, quieter and lasts 20 hours on a charge",
    "our coffee is now 100% ethically sourced",
    "join us at booth 42 to see the future of smart homes",
    "flights to Lisbon start at $199 this month",
    "the championship game kicks off tonight at 8pm",
    "our customer service team is here 24/7 if you need anything",
    "the recipe of the week is spicy chicken tacos with lime and cilantro",
    "we're committed to net zero emissions by 2040",
    "pre-orders for the new phone open Friday",
    "the film festival lineup has been announced",
    "our interns built a chatbot that answers billing questions",
    "the museum is free for students every Thursday",
    "we've partnered with local farmers to bring fresh produce to every store",
    "the summer sale ends at midnight",
    "our new podcast episode talks about burnout and balance",
    "the charity run raised $250,000 for children's hospitals",
    "your feedback helped us redesign the rewards program",
)
CLOSERS = (
    "Learn more: <hyperlink>",
    "Shop now <hyperlink>",
    "Tell us what you think!",
    "See you there!",
    "Thanks <mention> for the support.",
    "Details in the thread below.",
    "Tap the link in bio.",
    "Read the full story <hyperlink> <hyperlink>",
    "Reply with your favourite!",
    "RT to spread the word.",
    "Which one would you pick?",
    "DM us with any questions.",
    "Watch live: <hyperlink>",
    "",
)
TAGS = (
    "#NewArrivals",
    "#Hiring",
    "#CommunityFirst",
    "#EarthDay",
    "#TechNews",
    "#SummerSale",
    "#GameDay",
    "#FoodieFriday",
    "#Sustainability",
    "#CES2023",
    "#ThrowbackThursday",
    "#MondayMotivation",
)
EMOJI = ("🎉", "☕", "🌳", "🏈", "🍔", "❤️", "🚀", "👀", "🔥", "🙌", "📣", "✨")


def check_texts(n: int = 300, seed: int = 0) -> list[str]:
    """`n` distinct tweet-like texts, the same ones on every machine for a given seed."""
    rng = random.Random(seed)
    texts: dict[str, None] = {}
    while len(texts) < n:
        parts = [rng.choice(OPENERS) if rng.random() < 0.6 else "", rng.choice(BODIES)]
        if rng.random() < 0.3:
            parts.append("and " + rng.choice(BODIES))
        text = " ".join(p for p in parts if p)
        text = text[0].upper() + text[1:] + rng.choice((".", "!", "", " " + rng.choice(EMOJI)))
        text += " " + rng.choice(CLOSERS) if rng.random() < 0.7 else ""
        text += " " + " ".join(rng.sample(TAGS, rng.randint(1, 3))) if rng.random() < 0.5 else ""
        if rng.random() < 0.15:
            text = "<mention> " + text
        texts[" ".join(text.split())] = None
    return list(texts)
