"""Paper-only machinery, one package per paper (`modules/papers/<paper>/`).

The layout rule: a part that any recipe can use lives in a role folder (`modules/rewards`, `objectives`, `rollout`,
`verifiers`, `models`) or a shared top-level module (`policy`, `critic`, `optim`, `sft`, ...); a part that only one
paper's recipe uses lives in that paper's package here. Importing a paper package registers its reward functions:
`modules.rewards.get_reward` imports every package listed in `PAPERS` on its first unknown name, so a config can
name a paper's reward without importing the recipe.
"""

PAPERS = ("avatarshield", "disco", "distill", "geli", "general_reasoner", "geter", "gui_g1", "hcrmp", "hgpo", "laser",
          "mot", "nover", "omni_r1", "pixel_reasoner", "ppe", "safety_subspaces", "stepsearch", "tapo", "tinyv")
"""The paper packages (each `modules.papers.<name>`)."""
