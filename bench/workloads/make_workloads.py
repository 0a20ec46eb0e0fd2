#!/usr/bin/env python3
"""Writes the batching-benchmark workloads in bench/workloads/ for `chunkwise batch`.

    python3 bench/workloads/make_workloads.py            # (re)write the four .jsonl files
    python3 bench/workloads/make_workloads.py --check    # exit 1 if a shipped file is stale
    python3 bench/workloads/make_workloads.py --stats    # print estimated sizes per file
    # exact token counts (needs `transformers` + `gguf` and the SmolLM2 GGUF):
    /work/oracle-venv/bin/python bench/workloads/make_workloads.py --check --count-tokens

Every text below was written by hand for these workloads (sentence banks); no external data
is used. The script assembles prompts from the banks with fixed seeds, so the output is
byte-identical on every run and on every machine with Python >= 3.8 (only `random.Random`
with explicit seeds, `statistics.NormalDist` and integer/float arithmetic are used).

Files (see bench/workloads/README.md for what each one is for):

  shared_prefix.jsonl    BatchLLM: 4 long shared documents x 12 questions, all at t = 0,
                         file order shuffled so that no two neighbours share a document.
  chat_poisson.jsonl     48 chat requests, Poisson arrivals at 1.5 req/s, long-tailed
                         (log-normal) prompt and output lengths.
  long_prompt_mix.jsonl  Sarathi-Serve: 40 short chat requests (Poisson, 2 req/s) plus 3 prompts
                         of ~2,500-3,500 tokens arriving at 3 s, 8 s and 13 s.
  short_prompts.jsonl    Prepacking: 160 short raw prompts (8-64 tokens), outputs 4-16 tokens,
                         all at t = 0.

Token counts in this script are estimates: 1.3 tokens per whitespace-separated word, plus
CHAT_TEMPLATE_TOKENS for "chat": true requests (SmolLM2's ChatML template with its default
system message adds 24 tokens before the user text and 6 after it). --count-tokens reports the
exact numbers with the model's tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ("shared_prefix.jsonl", "chat_poisson.jsonl", "long_prompt_mix.jsonl", "short_prompts.jsonl")

TOKENS_PER_WORD = 1.3
CHAT_TEMPLATE_TOKENS = 30
MODEL_CONTEXT = 8192


def est_tokens(text: str) -> int:
    """Estimated SmolLM2 tokens of `text` alone (no chat template)."""
    return round(len(text.split()) * TOKENS_PER_WORD)


def short_est(text: str) -> int:
    """A tighter estimate for short texts: at least one token per word, digit and punctuation
    mark (SmolLM2 splits numbers into single digits)."""
    pieces = len(re.findall(r"[A-Za-z']+|\d|[^\sA-Za-z\d']", text))
    return max(est_tokens(text), pieces)


def est_prompt_tokens(r: dict) -> int:
    """Estimated tokens the engine prefills for request `r`."""
    return est_tokens(r["prompt"]) + (CHAT_TEMPLATE_TOKENS if r.get("chat") else 0)


# =============================================================================================
# Sentence banks, part 1: four documents for the shared-prefix (BatchLLM) workload. Each is a
# title plus sections; each section is a list of sentences that are joined into a paragraph.
# =============================================================================================
DOC_LIBRARY = ("Maple Hill Public Library: Member Handbook", [
    ("Welcome", [
        "Welcome to the Maple Hill Public Library, which has served the town and the surrounding villages since 1926.",
    ]),
    ("Membership", [
        "Membership is free for everyone who lives, works or studies in the Maple Hill district.",
        "To join, bring a photo ID and a letter or bill that shows your current address.",
        "Visitors from outside the district can buy a yearly membership for $25.",
        "If you lose your card, a replacement costs $3, and your old card is blocked straight away.",
    ]),
    ("Borrowing", [
        "Adult members can borrow up to 15 items at a time, and children can borrow up to 10.",
        "Books and audiobooks are lent for three weeks, while films and video games are lent for one week.",
        "You can renew an item twice, online or by phone, as long as no other member has reserved it.",
    ]),
    ("Fines and lost items", [
        "Late adult items cost 20 cents per day, up to a maximum of $5 per item.",
        "If an item is lost or badly damaged, you pay the cost of replacing it plus a $4 processing fee.",
    ]),
    ("Rooms and equipment", [
        "The main branch has two quiet study rooms and one meeting room for up to 20 people.",
        "Study rooms can be booked for up to three hours a day, and the meeting room is free for community groups.",
        "Public computers can be used for two hours a day, and printing costs 10 cents per black-and-white page.",
    ]),
    ("Events and digital services", [
        "Story time for children aged two to five takes place every Tuesday and Thursday at 10:30.",
        "With your card number and PIN you can borrow e-books, e-audiobooks and digital magazines through the library app.",
        "Digital loans return themselves automatically, so they never become late.",
    ]),
    ("Opening hours", [
        "The main branch is open from 9:00 to 20:00 on weekdays and from 10:00 to 17:00 on Saturdays.",
        "All branches are closed on Sundays and public holidays.",
    ]),
])

LIBRARY_QUESTIONS = [
    "How much does a replacement library card cost?",
    "How many items can a child borrow at once?",
    "How long can I keep a film?",
    "Can I renew a book if someone else has reserved it?",
    "I live outside the district. Can I still join, and what does it cost?",
    "What happens if I lose a book?",
    "When is story time for small children?",
    "Is the main branch open on Sunday?",
    "How long can I book a study room for?",
    "Do e-books ever become late?",
    "How much does it cost to print ten black-and-white pages?",
    "What do I need to bring to join the library?",
]

DOC_FILTER = ("Aqua 300 Countertop Water Filter: User Manual", [
    ("Introduction", [
        "Thank you for choosing the Aqua 300 countertop water filter.",
        "The Aqua 300 removes chlorine, sediment and many common metals from tap water, and it improves taste and smell.",
        "It is designed for cold municipal tap water only and must not be used with water from an unknown or untreated source.",
    ]),
    ("In the box", [
        "The box contains the filter housing, one FC-3 cartridge, a diverter valve, 1.5 metres of tubing and three tap adapters.",
    ]),
    ("Installation", [
        "First, unscrew the aerator from the end of your kitchen tap and keep it in a safe place.",
        "Choose the adapter that fits your tap thread, and screw the diverter valve onto it by hand.",
        "Connect the tubing to the diverter valve and to the inlet marked IN on the back of the housing.",
        "Before the first use, run water through the new cartridge for five minutes and throw this water away.",
        "Small black particles may appear during this first flush; they are harmless carbon dust.",
    ]),
    ("Daily use", [
        "To get filtered water, pull the lever on the diverter valve towards you.",
        "Never run hot water through the filter, because water above 38 °C can damage the cartridge.",
        "If the filter has not been used for more than three days, let the water run for 30 seconds before drinking it.",
    ]),
    ("Replacing the cartridge", [
        "An FC-3 cartridge filters about 1,500 litres, which lasts roughly four months for a family of four.",
        "The indicator light on the front of the housing turns from green to orange when 90 percent of the capacity has been used.",
        "To replace it, close the diverter valve, turn the top cover a quarter turn to the left and lift out the old cartridge.",
        "Insert the new cartridge, close the cover, and hold the reset button for five seconds until the light blinks green three times.",
    ]),
    ("Cleaning", [
        "Do not use bleach, solvents or abrasive cleaners, and never put any part of the unit in the dishwasher.",
    ]),
    ("Troubleshooting", [
        "If water leaks around the diverter valve, make sure you used the right adapter and that the rubber washer is in place.",
        "If the water tastes of chlorine, the cartridge is probably used up and should be replaced.",
    ]),
    ("Warranty", [
        "The housing and the diverter valve are covered by a two-year warranty against manufacturing defects.",
        "Cartridges are consumables and are not covered by the warranty.",
    ]),
])

FILTER_QUESTIONS = [
    "How long should I flush a new cartridge before the first use?",
    "What does it mean when the light turns orange?",
    "Can I run hot water through the filter?",
    "How often does a family of four need to change the cartridge?",
    "The water tastes like chlorine. What should I do?",
    "How do I reset the indicator after changing the cartridge?",
    "Can I wash the parts in the dishwasher?",
    "I see black bits in the water after installing the filter. Is that dangerous?",
    "Is the cartridge covered by the warranty?",
    "Water is leaking around the diverter valve. How can I fix it?",
    "What should I do if I have not used the filter for a week?",
    "What is included in the box?",
]

DOC_CHICKENS = ("Keeping Backyard Chickens: A Beginner's Guide", [
    ("Before you start", [
        "Keeping a few chickens in the garden is a rewarding hobby, and it gives you fresh eggs almost every day.",
        "Before you buy any birds, check the local rules, because some towns limit the number of hens or do not allow roosters at all.",
        "Chickens are social animals, so you should always keep at least three of them together.",
        "A healthy hen usually lives between six and eight years, although she lays fewer eggs after the age of three.",
    ]),
    ("The coop", [
        "Each bird needs at least 0.4 square metres of space inside the coop and about one square metre in the outdoor run.",
        "The coop needs perches about 60 centimetres above the floor, because chickens like to sleep high up.",
        "Provide one nest box for every three or four hens, lined with clean straw or wood shavings.",
        "Clean out droppings once a week and replace all the bedding once a month.",
    ]),
    ("Feeding", [
        "Adult hens should eat a complete layer feed, which gives them about 120 grams of food per bird per day.",
        "Kitchen scraps such as vegetables, fruit and cooked rice can be given as a treat, but no more than a handful per bird.",
        "Never feed chickens raw potato peel, avocado, chocolate or anything salty or mouldy.",
        "Hens need crushed oyster shell on the side, because the calcium helps them make strong eggshells.",
    ]),
    ("Water", [
        "A laying hen drinks up to half a litre of water a day, and more in hot weather.",
        "Change the water every day and scrub the drinker every week to stop algae from growing.",
    ]),
    ("Health", [
        "Check your birds every day: a healthy hen is alert, has bright eyes and a red comb, and moves around a lot.",
        "Red mites hide in the cracks of the coop during the day and feed on the birds at night, so inspect the perches regularly.",
        "A hen that sits puffed up in a corner and stops eating should be separated from the flock and checked by a vet.",
        "A shallow box of dry soil or sand lets the hens take dust baths, which helps them keep parasites away.",
    ]),
    ("Eggs", [
        "Most hens start laying at about 20 weeks of age.",
        "In spring and summer a good layer gives five or six eggs a week, but production drops when the days get shorter.",
        "Collect eggs at least once a day, and store them in the fridge with the pointed end down.",
        "Eggs with dirty shells should be wiped with a dry cloth instead of washed, because washing removes the natural protective layer.",
    ]),
    ("Winter", [
        "Chickens cope well with cold, but they suffer when they are wet, so keep the coop dry.",
    ]),
    ("Predators", [
        "Foxes are the biggest danger, and they can dig under fences, so bury the wire mesh at least 30 centimetres deep.",
        "Always close the coop door at dusk, when the hens have gone inside to roost.",
    ]),
])

CHICKEN_QUESTIONS = [
    "How many chickens should I keep at the very least?",
    "How much space does each hen need inside the coop?",
    "Can I give my hens avocado?",
    "Why do hens need oyster shell?",
    "At what age do hens start laying eggs?",
    "Should I wash dirty eggs?",
    "How can I protect my chickens from foxes?",
    "How much water does a hen drink each day?",
    "One of my hens is sitting puffed up in a corner and not eating. What should I do?",
    "Why do my hens lay fewer eggs in winter?",
    "How often should I change the bedding in the coop?",
    "How long does a chicken live?",
]

DOC_ONBOARDING = ("Northwind Logistics: Guide for New Employees", [
    ("Welcome", [
        "Welcome to Northwind Logistics. We are glad that you have joined our team.",
        "Northwind moves goods for more than 400 shops and factories across the region, from three warehouses and a fleet of 120 vans and trucks.",
        "This guide covers the practical things you need to know in your first weeks, and your manager will go through it with you on your first day.",
    ]),
    ("Your first week", [
        "On your first morning, please come to the reception of the Harbour Road office at 8:30 and ask for your manager.",
        "You will receive your ID badge, your laptop and a locker key, and you will sign the safety register.",
        "During the first week you will shadow an experienced colleague, who is called your buddy.",
        "All new employees must complete the online safety course and the data protection course by the end of their second week.",
    ]),
    ("Working hours", [
        "Office staff normally work from 8:30 to 17:00, Monday to Friday, with a one-hour lunch break.",
        "Warehouse staff work in shifts: the early shift runs from 6:00 to 14:00 and the late shift runs from 14:00 to 22:00.",
        "If you want to swap a shift with a colleague, both of you must agree and the shift leader must approve it in the staff app.",
        "Office staff may work from home up to two days a week once they have completed their three-month trial period.",
    ]),
    ("Time off", [
        "Full-time employees receive 25 days of paid holiday per year, plus public holidays.",
        "Holiday requests should be made in the staff app at least two weeks in advance.",
        "If you are ill, call your manager before the start of your shift instead of just sending a text message.",
        "For an absence of more than three days, you need a note from a doctor.",
    ]),
    ("Pay and expenses", [
        "Salaries are paid on the 25th of each month, and your payslip appears in the staff app the day before.",
        "Travel for work is reimbursed at 30 cents per kilometre if you use your own car.",
    ]),
    ("IT and security", [
        "Your password must be at least 12 characters long, and you will be asked to change it every six months.",
        "Never share your password, not even with the IT team, who will never ask for it.",
        "Report suspicious emails with the Report button in the mail program rather than clicking on any links.",
    ]),
    ("Health and safety", [
        "Safety shoes and a high-visibility vest must be worn at all times in the warehouse.",
        "Only staff with a valid licence and the internal training certificate may drive a forklift.",
        "Every accident or near miss must be reported to the shift leader on the same day, even if nobody was hurt.",
        "Fire drills take place twice a year, and the assembly point is the car park next to the main gate.",
    ]),
    ("Who to ask", [
        "Questions about pay and holidays go to the HR team at hr@northwind.example or extension 2200.",
        "IT problems can be reported through the help desk portal or by calling extension 2300.",
    ]),
])

ONBOARDING_QUESTIONS = [
    "Where should I go on my first morning?",
    "How many days of paid holiday do I get?",
    "When is the salary paid?",
    "I want to swap my shift with a colleague. What do I need to do?",
    "How much do I get per kilometre if I use my own car for work?",
    "Can I work from home in my first month?",
    "I am sick today. How should I tell my manager?",
    "What should I do with a suspicious email?",
    "Who is allowed to drive a forklift?",
    "Where is the assembly point during a fire drill?",
    "Nobody was hurt, but a pallet almost fell on a colleague. Do I need to report it?",
    "When does the late shift start and end?",
]

# (group name, document, questions), smallest document first.
SHARED_DOCS = [
    ("library", DOC_LIBRARY, LIBRARY_QUESTIONS),
    ("filter", DOC_FILTER, FILTER_QUESTIONS),
    ("chickens", DOC_CHICKENS, CHICKEN_QUESTIONS),
    ("onboarding", DOC_ONBOARDING, ONBOARDING_QUESTIONS),
]

# =============================================================================================
# Sentence banks, part 2: ten general topics, twelve sentences each, in reading order. Used
# for the "notes" in chat prompts, for the long documents of the long-prompt mix and (with the
# documents above) as openings of the short completion prompts.
# =============================================================================================
TOPICS = [
    ("starting a vegetable garden", [
        "Starting a small vegetable garden is easier than most people think, even if you only have a balcony.",
        "The most important thing is sunlight, because most vegetables need at least six hours of direct sun a day.",
        "Lettuce, radishes and spinach grow quickly and are good choices for a first season.",
        "Tomatoes and peppers need more warmth, so they should be planted out only after the last frost.",
        "Good soil is dark and crumbly, and it holds water without becoming muddy.",
        "Adding a few centimetres of compost every spring feeds the soil and the small creatures that live in it.",
        "Water deeply once or twice a week instead of giving the plants a little water every day.",
        "Watering early in the morning means that less water evaporates and the leaves dry before evening.",
        "A layer of straw or dry leaves around the plants keeps the soil moist and stops weeds from growing.",
        "Slugs can destroy young seedlings in one night, so check the beds after rain.",
        "Growing marigolds and herbs between the vegetables attracts useful insects such as bees and ladybirds.",
        "Keeping a simple notebook of what you planted and when helps you plan a better garden next year.",
    ]),
    ("the history of railways", [
        "The first public railway to use steam locomotives opened in the north of England in 1825.",
        "Early trains were slow and uncomfortable, and many people believed that travelling at thirty kilometres an hour was dangerous to health.",
        "Within a few decades, railways had spread across Europe and North America and changed the way people lived and worked.",
        "Fresh fish, milk and newspapers could suddenly reach cities far from where they were produced.",
        "Railways also created the need for standard time, because every town had previously kept its own local time.",
        "In 1883 the railway companies of the United States and Canada agreed on a system of time zones.",
        "Building the lines was hard and dangerous work, done mostly by hand with picks, shovels and explosives.",
        "Long tunnels through the Alps, such as the Gotthard tunnel opened in 1882, took many years to dig.",
        "In the twentieth century, diesel and electric locomotives gradually replaced steam engines.",
        "The first high-speed line, the Japanese Shinkansen, opened in 1964 in time for the Olympic Games in Tokyo.",
        "Today high-speed trains in several countries run at more than 300 kilometres an hour.",
        "Because trains use much less energy per passenger than cars or planes, many governments are investing in rail again.",
    ]),
    ("baking bread at home", [
        "Baking your own bread needs only four ingredients: flour, water, salt and yeast.",
        "Strong bread flour contains more protein than ordinary flour, which helps the dough become stretchy.",
        "Kneading develops gluten, the network of proteins that traps the gas produced by the yeast.",
        "A dough is kneaded enough when it feels smooth and springs back slowly when you press it with a finger.",
        "The first rise usually takes one to two hours in a warm kitchen, until the dough has doubled in size.",
        "A slow rise in the fridge overnight gives the bread more flavour.",
        "After shaping, the loaf needs a second, shorter rise before it goes into the oven.",
        "A very hot oven and a little steam in the first minutes help the bread to form a crisp, golden crust.",
        "You can tell that a loaf is baked when it sounds hollow as you knock on the bottom.",
        "Let the bread cool on a rack for at least half an hour, because it keeps cooking inside as it cools.",
        "Sourdough uses a starter of wild yeast and bacteria instead of packet yeast, and it gives a slightly sour taste.",
        "Stale bread does not need to be thrown away: it makes excellent breadcrumbs, croutons or bread pudding.",
    ]),
    ("bird migration", [
        "Every autumn, billions of birds leave their breeding grounds and fly towards warmer regions.",
        "They migrate mainly because food such as insects, seeds and fruit becomes scarce in winter.",
        "Some small songbirds weigh less than 20 grams, yet they fly thousands of kilometres each year.",
        "The Arctic tern holds the record, travelling from the Arctic to the Antarctic and back again every year.",
        "Many songbirds migrate at night, when the air is calmer and there are fewer predators.",
        "Birds find their way by using the sun, the stars, the Earth's magnetic field and familiar landmarks.",
        "Before they leave, many species eat so much that they nearly double their body weight.",
        "Geese and cranes often fly in a V shape, which saves energy for the birds that follow the leader.",
        "Wetlands and coasts where migrating birds rest and feed are called stopover sites.",
        "The loss of these stopover sites is one of the biggest threats that migrating birds face today.",
        "Bright city lights at night can confuse migrating birds and cause them to crash into buildings.",
        "Volunteers around the world count birds and fit some of them with tiny rings or trackers to learn more about their journeys.",
    ]),
    ("making a household budget", [
        "A household budget is simply a plan for how you will spend the money you earn each month.",
        "The first step is to write down your income after tax and all your regular bills.",
        "Next, track every purchase for a month, including small things like coffee and snacks.",
        "Most people are surprised by how much they spend without noticing.",
        "A popular rule of thumb is to use half of your income for needs, thirty percent for wants and twenty percent for savings.",
        "It is wise to build an emergency fund that covers at least three months of essential costs.",
        "Paying off credit card debt early usually saves more money than any savings account can earn.",
        "Setting up an automatic transfer to savings on payday makes saving a habit rather than a decision.",
        "Before a large purchase, waiting a few days often shows whether you really need it.",
        "Comparing prices for insurance, phone contracts and energy once a year can save a surprising amount.",
        "A budget should be reviewed every few months, because income and costs change over time.",
        "The goal is not to stop spending, but to spend on the things that matter most to you.",
    ]),
    ("volcanoes", [
        "A volcano is an opening in the Earth's crust through which molten rock, gas and ash escape.",
        "Below the surface the molten rock is called magma, and once it reaches the surface it is called lava.",
        "Most volcanoes are found along the edges of tectonic plates, especially around the Pacific Ocean.",
        "This area is known as the Ring of Fire, and it has about three quarters of the world's active volcanoes.",
        "Some volcanoes, such as those in Hawaii, produce runny lava that flows for long distances.",
        "Others produce thick, sticky lava that traps gas and can lead to violent explosions.",
        "The eruption of Mount Vesuvius in the year 79 buried the Roman towns of Pompeii and Herculaneum.",
        "Volcanic ash can travel thousands of kilometres and can damage the engines of aircraft.",
        "In 2010 an eruption in Iceland closed much of the airspace over Europe for almost a week.",
        "Scientists watch active volcanoes by measuring small earthquakes, gas emissions and changes in the shape of the ground.",
        "Although eruptions can be dangerous, volcanic soils are very fertile, and many farmers live near volcanoes.",
        "Volcanic heat is also used to produce electricity in countries such as Iceland, Kenya and New Zealand.",
    ]),
    ("working from home", [
        "Working from home can save hours of commuting each week, but it needs some discipline.",
        "Having a fixed place to work, even a small corner of a room, helps the mind switch into work mode.",
        "A good chair and a screen at eye level prevent back and neck pain.",
        "Many people find it useful to start and finish work at the same time every day.",
        "Short breaks every hour, with a little walk or stretch, keep energy and concentration up.",
        "Without the chats in the office kitchen, it is easy to feel isolated from colleagues.",
        "A short video call at the start of the week helps a team agree on priorities.",
        "Writing things down clearly becomes more important when people are not in the same room.",
        "Turning off notifications for a few hours makes it easier to focus on difficult tasks.",
        "At the end of the day, closing the laptop and leaving the work area marks the end of work.",
        "Some companies now offer a mix of office days and home days, which is called hybrid work.",
        "Whatever the arrangement, good communication and trust matter more than the place where people sit.",
    ]),
    ("the history of maps", [
        "People have drawn maps for thousands of years, first on clay tablets and later on paper.",
        "One of the oldest known world maps was made in Babylon about 2,500 years ago.",
        "The Greek scholar Ptolemy described how to draw the curved Earth on a flat surface using lines of latitude and longitude.",
        "Medieval European maps often placed Jerusalem at the centre and mixed geography with religious stories.",
        "During the age of exploration, sailors brought back new information and mapmakers kept updating their charts.",
        "In 1569 Gerardus Mercator published a projection that kept compass directions straight, which made it very useful for navigation.",
        "The Mercator projection makes countries near the poles look much larger than they really are.",
        "For this reason Greenland looks about as large as Africa, although Africa is fourteen times bigger.",
        "National mapping agencies in the eighteenth and nineteenth centuries measured entire countries with great care.",
        "Aerial photography and, later, satellites made maps far more accurate in the twentieth century.",
        "Today most people carry a digital map in their pocket that shows their position within a few metres.",
        "Even so, many walkers and sailors still take a paper map, because it works without batteries or a signal.",
    ]),
    ("running for beginners", [
        "Running is one of the simplest ways to get fit, because all you need is a pair of good shoes.",
        "Beginners should start with intervals, for example one minute of running followed by two minutes of walking.",
        "Over several weeks, the running intervals can become longer and the walking breaks shorter.",
        "Running at a pace where you can still talk in full sentences builds endurance without exhausting you.",
        "It is better to run three times a week for twenty minutes than once a week for an hour.",
        "Increasing your weekly distance by no more than ten percent reduces the risk of injury.",
        "A few minutes of brisk walking before a run warms up the muscles and joints.",
        "Pain that gets worse while running is a signal to stop and rest, not to push through.",
        "Drinking water during the day matters more than drinking a lot just before a run.",
        "Many towns have free weekly 5 km runs in parks, which are friendly places for beginners.",
        "Running with a friend or a club makes it easier to keep going on days when motivation is low.",
        "After a few months, many beginners are surprised to find that they can run for thirty minutes without stopping.",
    ]),
    ("ocean tides", [
        "Along most coasts, the sea rises and falls twice a day in a regular rhythm called the tide.",
        "Tides are caused mainly by the pull of the Moon's gravity on the oceans.",
        "The Sun also affects the tides, but its effect is a little less than half that of the Moon.",
        "When the Sun, the Moon and the Earth are in a line, at new moon and full moon, the tides are especially high and low.",
        "These strong tides are called spring tides, although they have nothing to do with the season.",
        "When the Sun and the Moon pull at right angles, the difference between high and low water is smaller.",
        "These weaker tides are called neap tides.",
        "The shape of the coast has a big effect on how high the tide rises.",
        "In the Bay of Fundy in Canada, the difference between high and low tide can be more than 15 metres.",
        "In the Mediterranean Sea, by contrast, the tide is often only a few centimetres.",
        "Fishermen, sailors and walkers on the shore need tide tables to plan their activities safely.",
        "In a few places, the energy of the tides is used to generate electricity.",
    ]),
]

# Standalone chat questions, for chat prompts too short to carry notes.
QUESTIONS = [
    "What is the difference between weather and climate?",
    "Can you give me three ideas for a healthy breakfast?",
    "How do I politely decline an invitation to a party?",
    "Why do cats purr?",
    "What is a good way to remember new English words?",
    "Explain in simple words what a computer virus is.",
    "How long should I boil an egg for a soft yolk?",
    "Write a two-line poem about autumn.",
    "What are some fun things to do on a rainy day with children?",
    "How can I keep my houseplants alive while I am on holiday?",
    "What should I pack for a weekend hiking trip?",
    "Why is it important to get enough sleep?",
    "How do I write a short thank-you note to a teacher?",
    "What is the tallest mountain in Africa?",
    "Give me a simple recipe for tomato soup.",
    "How can I stop putting things off until the last minute?",
    "What does a bee do with pollen?",
    "Suggest a name for a small bakery.",
    "How do I say good morning in Spanish and in French?",
    "What is the difference between a virus and a bacterium?",
    "What is a haiku? Give me an example.",
    "How many minutes are there in a day?",
    "What are three tips for a job interview?",
    "Why do leaves change colour in autumn?",
    "How do I clean a cast iron pan?",
    "Explain what a noun is, with two examples.",
    "What can I cook with rice, eggs and spinach?",
    "Why is the sea salty?",
    "Tell me a short joke about a penguin.",
    "How do I start learning to play the guitar?",
    "What is recycling and why does it matter?",
    "Summarise the story of Cinderella in three sentences.",
]

# Extra context that turns a standalone question into a slightly longer chat message.
CONTEXT_LINES = [
    "I asked a friend earlier today, but we could not agree on the answer.",
    "My daughter asked me this at dinner and I did not know what to say.",
    "I am preparing a short talk for my club next week and want to get it right.",
    "I have read a few different things online and now I am confused.",
    "Please keep the answer short and simple, because I am reading on my phone.",
    "I am learning English, so please use easy words if you can.",
]

# What the user asks about their notes.
NOTE_INSTRUCTIONS = [
    "Can you summarise these notes in two sentences?",
    "What are the three most important points in my notes?",
    "Please turn these notes into a short list of bullet points.",
    "Write one question that a teacher could ask about these notes.",
    "Rewrite the first two sentences in simpler English.",
    "Is there anything in my notes that seems surprising? Explain briefly.",
    "Give my notes a short, catchy title.",
    "Explain the main idea of these notes to a ten-year-old.",
]

# What the user asks about a long collection of documents (long-prompt mix).
LONG_INSTRUCTIONS = [
    "Which of the sections above is about animals? Answer with its title only.",
    "In one sentence, what is the topic of the very first section above?",
    "Name one number that appears in the last section above.",
]

# Greeting x name gives every chat request a different opening, so that chat requests share
# at most the chat template's system message with each other, never a longer prefix.
GREETINGS = ["Hi, this is", "Hello, my name is", "Hey there, I'm", "Good morning, I'm",
             "Good evening, this is", "Hi there, it's"]
NAMES = ["Ana", "Ben", "Chloe", "David", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal",
         "Lena", "Marco", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samir", "Tara", "Umar",
         "Vera", "Wen", "Yusuf"]


# =============================================================================================
# Helpers
# =============================================================================================
def render_doc(doc) -> str:
    title, sections = doc
    parts = [title]
    for heading, sentences in sections:
        parts.append(f"{heading}\n{' '.join(sentences)}")
    return "\n\n".join(parts)


def lognormal_quantiles(n: int, median: float, sigma: float, lo: int, hi: int) -> list[int]:
    """n stratified draws of a log-normal: the values at quantiles (i + 0.5) / n, clipped to
    [lo, hi]. Stratifying (instead of sampling) fixes the shape of the tail exactly."""
    nd = statistics.NormalDist()
    out = []
    for i in range(n):
        z = nd.inv_cdf((i + 0.5) / n)
        out.append(min(hi, max(lo, round(median * (2.718281828459045 ** (sigma * z))))))
    return out


def poisson_arrivals(rng: random.Random, n: int, rate: float) -> list[float]:
    """Arrival times of a Poisson process (exponential gaps), rescaled so that the n-th arrival
    is at exactly n / rate: the file then offers the nominal load whatever the seed drew."""
    gaps = [rng.expovariate(rate) for _ in range(n)]
    scale = (n / rate) / sum(gaps)
    t, out = 0.0, []
    for g in gaps:
        t += g * scale
        out.append(round(t, 3))
    return out


def all_sentences() -> list[str]:
    """Every sentence of the documents and topics, in bank order."""
    out = []
    for _, doc, _ in SHARED_DOCS:
        for _, sentences in doc[1]:
            out.extend(sentences)
    for _, sentences in TOPICS:
        out.extend(sentences)
    return out


class ChatPromptMaker:
    """Builds chat messages of a target size from the banks. Every message starts with a
    distinct greeting + name, then either a standalone question (short targets) or notes taken
    from the topic banks followed by an instruction (longer targets)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.openings = [f"{g} {n}." for g in GREETINGS for n in NAMES]
        rng.shuffle(self.openings)
        self.questions = list(QUESTIONS)
        rng.shuffle(self.questions)
        self.nq = 0

    def _opening(self) -> str:
        assert self.openings, "ran out of distinct openings"
        return self.openings.pop()

    def _question(self) -> str:
        q = self.questions[self.nq % len(self.questions)]
        self.nq += 1
        return q

    def make(self, target_tokens: int) -> str:
        opening = self._opening()
        if target_tokens < 60:
            text = f"{opening} {self._question()}"
            context = list(CONTEXT_LINES)
            self.rng.shuffle(context)
            # Add context lines (before the question) while that brings us closer to the target.
            while context and abs(est_tokens(text) + est_tokens(context[-1]) - target_tokens) < \
                    abs(est_tokens(text) - target_tokens):
                q = text[len(opening) + 1:]
                text = f"{opening} {context.pop()} {q}"
            return text
        instruction = self.rng.choice(NOTE_INSTRUCTIONS)
        budget = target_tokens - est_tokens(opening) - est_tokens(instruction) - 8
        topic = self.rng.randrange(len(TOPICS))
        start = self.rng.randrange(len(TOPICS[topic][1]))
        parts, used = [], 0
        name, sentences = TOPICS[topic]
        parts.append(f"I wrote some notes about {name}:\n")
        i = start
        while used < budget:
            s = sentences[i]
            parts.append(s + " ")
            used += est_tokens(s)
            i += 1
            if i == len(sentences):  # continue with the next topic
                topic = (topic + 1) % len(TOPICS)
                name, sentences = TOPICS[topic]
                i = 0
                if used < budget:
                    parts[-1] = parts[-1].rstrip()
                    parts.append(f"\n\nI also wrote some notes about {name}:\n")
        notes = "".join(parts).rstrip()
        return f"{opening} {notes}\n\n{instruction}"


# =============================================================================================
# Workloads
# =============================================================================================
SHARED_SEED = 1201
CHAT_SEED = 1202
MIX_SEED = 1203
SHORT_SEED = 1204

SHARED_INSTRUCTION = "Read the document below and answer the question at the end in one or two sentences."
# max_tokens multiset for the 48 shared-prefix requests: mostly {8, 16, 32, 64}, long tail.
SHARED_MAX_TOKENS = [8] * 14 + [16] * 14 + [32] * 10 + [64] * 6 + [128] * 3 + [256] * 1
SHARED_PRIORITY1 = 12


def build_shared_prefix() -> list[dict]:
    rng = random.Random(SHARED_SEED)
    groups: dict[str, list[dict]] = {}
    for name, doc, questions in SHARED_DOCS:
        prefix = f"{SHARED_INSTRUCTION}\n\n{render_doc(doc)}\n\n"
        groups[name] = [{"id": f"{name}-q{i:02d}", "prompt": prefix + f"Question: {q}", "chat": True,
                         "_group": name, "_prefix": prefix}
                        for i, q in enumerate(questions, start=1)]
    # Interleave: at each position pick a group other than the previous one, weighted by how
    # many of its requests are left; restart (same RNG stream) on a dead end.
    while True:
        queues = {k: list(v) for k, v in groups.items()}
        for q in queues.values():
            rng.shuffle(q)
        order, last = [], None
        while any(queues.values()):
            cands = [k for k, q in queues.items() if q and k != last]
            if not cands:
                break
            k = rng.choices(cands, weights=[len(queues[c]) for c in cands])[0]
            order.append(queues[k].pop())
            last = k
        if len(order) == sum(len(v) for v in groups.values()):
            break
    max_tokens = list(SHARED_MAX_TOKENS)
    rng.shuffle(max_tokens)
    prio = set(rng.sample(range(len(order)), SHARED_PRIORITY1))
    for i, r in enumerate(order):
        r["max_tokens"] = max_tokens[i]
        r["arrival_s"] = 0.0
        r["priority"] = 1 if i in prio else 0
    return order


CHAT_N, CHAT_RATE = 48, 1.5


def build_chat_poisson() -> list[dict]:
    rng = random.Random(CHAT_SEED)
    prompt_targets = lognormal_quantiles(CHAT_N, median=110, sigma=0.9, lo=20, hi=800)
    output_lens = lognormal_quantiles(CHAT_N, median=32, sigma=0.8, lo=8, hi=128)
    rng.shuffle(prompt_targets)
    rng.shuffle(output_lens)
    arrivals = poisson_arrivals(rng, CHAT_N, CHAT_RATE)
    maker = ChatPromptMaker(rng)
    out = []
    for i in range(CHAT_N):
        out.append({"id": f"chat-{i + 1:02d}", "prompt": maker.make(prompt_targets[i]),
                    "max_tokens": output_lens[i], "chat": True, "arrival_s": arrivals[i], "priority": 0,
                    "_target": prompt_targets[i]})
    return out


MIX_SHORT_N, MIX_RATE = 40, 2.0
MIX_LONG = [(3.0, 2750), (8.0, 3200), (13.0, 3650)]  # (arrival_s, estimated prompt tokens)
MIX_LONG_MAX_TOKENS = 16


def long_document(rng: random.Random, opening: str, target_tokens: int, instruction: str) -> str:
    """A collection of titled sections (topics and documents, seeded order) of about
    `target_tokens` estimated tokens in all, chat template included."""
    sections = [(name[0].upper() + name[1:], " ".join(s)) for name, s in TOPICS]
    for _, (title, secs), _ in SHARED_DOCS:
        sections.append((title, " ".join(" ".join(s) for _, s in secs)))
    rng.shuffle(sections)
    head = f"{opening} Below is a collection of texts I put together for a project."
    budget = target_tokens - CHAT_TEMPLATE_TOKENS - est_tokens(head) - est_tokens(instruction)
    parts, used = [], 0
    for title, body in sections:
        if used >= budget:
            break
        sentences = body.split(". ")
        take = []
        for s in sentences:  # the last section is cut at a sentence boundary to hit the target
            if used >= budget:
                break
            s = s if s.endswith(".") else s + "."
            take.append(s)
            used += est_tokens(s)
        parts.append(f"## {title}\n{' '.join(take)}")
        used += est_tokens(title) + 1
    return f"{head}\n\n" + "\n\n".join(parts) + f"\n\n{instruction}"


def build_long_prompt_mix() -> list[dict]:
    rng = random.Random(MIX_SEED)
    maker = ChatPromptMaker(rng)
    arrivals = poisson_arrivals(rng, MIX_SHORT_N, MIX_RATE)
    out = []
    for i in range(MIX_SHORT_N):
        target = rng.randint(20, 150)
        out.append({"id": f"short-{i + 1:02d}", "prompt": maker.make(target),
                    "max_tokens": rng.randint(32, 64), "chat": True, "arrival_s": arrivals[i],
                    "priority": 0, "_target": target})
    for j, (t, target) in enumerate(MIX_LONG, start=1):
        prompt = long_document(rng, maker._opening(), target, LONG_INSTRUCTIONS[j - 1])
        out.append({"id": f"long-{j}", "prompt": prompt, "max_tokens": MIX_LONG_MAX_TOKENS, "chat": True,
                    "arrival_s": t, "priority": 0, "_target": target})
    out.sort(key=lambda r: (r["arrival_s"], r["id"]))
    return out


SHORT_N = 160


def build_short_prompts() -> list[dict]:
    """Raw completion prompts: the opening words of a sentence from the banks (running on into
    the next sentence of the same bank for longer targets), cut after a seeded number of words.
    Every prompt starts with a different sentence."""
    rng = random.Random(SHORT_SEED)
    pool = []  # (start sentence, text that follows it in its bank)
    banks = [s for _, doc, _ in SHARED_DOCS for _, s in doc[1]] + [s for _, s in TOPICS]
    for bank in banks:
        for i in range(len(bank)):
            pool.append(" ".join(bank[i:]))
    rng.shuffle(pool)
    out = []
    for i in range(SHORT_N):
        target = rng.randint(8, 64)
        words = pool[i].split()
        # The longest opening whose estimate (the larger of the per-word and per-piece ones:
        # numbers and punctuation cost extra tokens) is within the target; at least 3 words.
        n = 3
        while n < len(words) and short_est(" ".join(words[:n + 1])) <= target:
            n += 1
        text = " ".join(words[:n])
        out.append({"id": f"p{i + 1:03d}", "prompt": text, "max_tokens": rng.randint(4, 16), "chat": False,
                    "arrival_s": 0.0, "priority": 0, "_target": target})
    return out


BUILDERS = {
    "shared_prefix.jsonl": build_shared_prefix,
    "chat_poisson.jsonl": build_chat_poisson,
    "long_prompt_mix.jsonl": build_long_prompt_mix,
    "short_prompts.jsonl": build_short_prompts,
}


def validate(name: str, reqs: list[dict]) -> None:
    ids = [r["id"] for r in reqs]
    assert len(ids) == len(set(ids)), f"{name}: duplicate id"
    for r in reqs:
        assert r["max_tokens"] >= 1 and r["arrival_s"] >= 0 and r["prompt"], (name, r["id"])
        # Generous margin on the estimate: the exact count must also fit the context.
        assert est_prompt_tokens(r) * 1.5 + r["max_tokens"] < MODEL_CONTEXT, (name, r["id"])
    if name == "shared_prefix.jsonl":
        assert len(reqs) == 48
        for a, b in zip(reqs, reqs[1:]):
            assert a["_group"] != b["_group"], f"{name}: {a['id']} and {b['id']} are adjacent"
        for g, _, _ in SHARED_DOCS:
            members = [r for r in reqs if r["_group"] == g]
            assert len(members) == 12 and all(r["prompt"].startswith(members[0]["_prefix"]) for r in members)
            assert 400 <= est_tokens(members[0]["_prefix"]) <= 720, (g, est_tokens(members[0]["_prefix"]))
        assert sorted(r["max_tokens"] for r in reqs) == sorted(SHARED_MAX_TOKENS)
        assert all(r["arrival_s"] == 0 for r in reqs)
    elif name == "chat_poisson.jsonl":
        assert len(reqs) == CHAT_N and all(r["chat"] for r in reqs)
        assert all(8 <= r["max_tokens"] <= 128 for r in reqs)
    elif name == "long_prompt_mix.jsonl":
        longs = [r for r in reqs if r["id"].startswith("long-")]
        shorts = [r for r in reqs if r["id"].startswith("short-")]
        assert len(longs) == 3 and len(shorts) == MIX_SHORT_N
        assert all(2400 <= est_prompt_tokens(r) <= 3800 for r in longs), [est_prompt_tokens(r) for r in longs]
        assert all(32 <= r["max_tokens"] <= 64 for r in shorts)
    elif name == "short_prompts.jsonl":
        assert len(reqs) == SHORT_N and not any(r["chat"] for r in reqs)
        assert all(4 <= r["max_tokens"] <= 16 for r in reqs)
        assert all(5 <= est_prompt_tokens(r) <= 70 for r in reqs)
    # No two prompts may share a long textual prefix (that would let the prefix cache skip
    # work that the workload means to measure), except the shared-prefix groups by design.
    if name != "shared_prefix.jsonl":
        heads = [" ".join(r["prompt"].split()[:6]) for r in reqs]
        assert len(set(heads)) == len(heads), f"{name}: two prompts start with the same six words"


def render(reqs: list[dict]) -> str:
    lines = []
    for r in reqs:
        obj = {k: r[k] for k in ("id", "prompt", "max_tokens", "chat", "arrival_s", "priority")}
        lines.append(json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")))
    return "\n".join(lines) + "\n"


def summary(name: str, reqs: list[dict]) -> str:
    p = [est_prompt_tokens(r) for r in reqs]
    o = [r["max_tokens"] for r in reqs]
    t = [r["arrival_s"] for r in reqs]
    return (f"{name:<22} {len(reqs):>4} req  prompt tokens (est.) {sum(p):>6} "
            f"[{min(p)}-{max(p)}, median {statistics.median(p):g}]  output budget {sum(o):>5} "
            f"[{min(o)}-{max(o)}]  arrivals {min(t):g}-{max(t):g} s")


# ---------------------------------------------------------------------------------------------
# Exact token counts (optional; needs transformers + gguf and the model)
# ---------------------------------------------------------------------------------------------
def count_tokens(workloads: dict[str, list[dict]], model_dir: str, gguf_file: str) -> None:
    from transformers import AutoTokenizer  # noqa: PLC0415 (optional dependency)

    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)

    def engine_ids(r: dict) -> list[int]:
        text = r["prompt"]
        if r["chat"]:
            text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        return tok(text, add_special_tokens=False).input_ids

    for name, reqs in workloads.items():
        n = [len(engine_ids(r)) for r in reqs]
        est = [est_prompt_tokens(r) for r in reqs]
        o = sum(r["max_tokens"] for r in reqs)
        print(f"{name:<22} {len(reqs):>4} req  prompt tokens (exact) {sum(n):>6} [{min(n)}-{max(n)}, "
              f"median {statistics.median(n):g}]  estimate {sum(est)} ({sum(est) / sum(n):.2f}x)  "
              f"output budget {o}  longest prompt + max_tokens {max(a + r['max_tokens'] for a, r in zip(n, reqs))}")
        if name == "shared_prefix.jsonl":
            for g, _, _ in SHARED_DOCS:
                seqs = [engine_ids(r) for r in reqs if r["_group"] == g]
                common = 0
                while all(len(s) > common and s[common] == seqs[0][common] for s in seqs):
                    common += 1
                prefix = next(r["_prefix"] for r in reqs if r["_group"] == g)
                print(f"    {g:<11} document+instruction {len(tok(prefix, add_special_tokens=False).input_ids)} "
                      f"tokens, common token prefix of the group {common}, prompts {min(map(len, seqs))}-"
                      f"{max(map(len, seqs))}")
            all_ids = [engine_ids(r) for r in reqs]
            total = sum(map(len, all_ids))
            for block in (1, 16):  # 1: token-level prefix cache; 16: full KV blocks only
                seen, computed = set(), 0
                for seq in all_ids:
                    full = len(seq) // block
                    for b in range(full):
                        key = tuple(seq[: (b + 1) * block])
                        if key not in seen:
                            seen.add(key)
                            computed += block
                    computed += len(seq) - full * block
                print(f"    prefix cache, {'token level' if block == 1 else f'block size {block}'}: "
                      f"{computed} of {total} tokens to compute ({1 - computed / total:.1%} reusable)")
        if name == "long_prompt_mix.jsonl":
            print("    long prompts: " + ", ".join(f"{r['id']} {a} tokens at {r['arrival_s']} s"
                                                  for a, r in zip(n, reqs) if r["id"].startswith("long-")))
            short = [a for a, r in zip(n, reqs) if r["id"].startswith("short-")]
            print(f"    short prompts: {min(short)}-{max(short)} tokens, total {sum(short)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=HERE, help="where the .jsonl files live (default: here)")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if any file is stale")
    ap.add_argument("--stats", action="store_true", help="print estimated sizes")
    ap.add_argument("--count-tokens", action="store_true", help="print exact token counts")
    ap.add_argument("--model-dir", default=os.path.expanduser("~/.cache/chunkwise/models"))
    ap.add_argument("--gguf-file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()

    workloads = {}
    stale = []
    for name in FILES:
        reqs = BUILDERS[name]()
        validate(name, reqs)
        workloads[name] = reqs
        text = render(reqs)
        path = args.dir / name
        if args.check:
            current = path.read_text(encoding="utf-8") if path.exists() else None
            if current != text:
                stale.append(name)
                print(f"{path} is stale; run {Path(__file__).name}", file=sys.stderr)
            else:
                print(f"{path} is up to date ({len(reqs)} requests)")
        else:
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path} ({len(reqs)} requests)")
        if args.stats:
            print("  " + summary(name, reqs))
    if args.count_tokens:
        count_tokens(workloads, args.model_dir, args.gguf_file)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
