"""Three small workflows showing the DSL: a chain, parallel + branch, and suspend/resume."""

from __future__ import annotations

from pydantic import BaseModel, Field

from stepline.server import StepContext, Workflow, step


class Name(BaseModel):
    name: str = Field(min_length=1)


class Greeting(BaseModel):
    message: str


@step(input=Name, output=Greeting)
async def say_hello(ctx: StepContext[Name]) -> Greeting:
    """Greets the caller."""
    return Greeting(message=f"Hello, {ctx.input.name}!")


@step(input=Greeting, output=Greeting)
async def shout(ctx: StepContext[Greeting]) -> Greeting:
    """Upper-cases the greeting."""
    await ctx.write({"note": "shouting"})
    return Greeting(message=ctx.input.message.upper())


greet = (
    Workflow("greet", input=Name, output=Greeting, description="Say hello, then shout it.")
    .then(say_hello)
    .then(shout)
    .commit()
)


class User(BaseModel):
    email: str
    plan: str = "free"


class Done(BaseModel):
    done: bool


@step(input=User, output=Done)
async def send_welcome(ctx: StepContext[User]) -> Done:
    return Done(done=True)


@step(input=User, output=Done)
async def create_account(ctx: StepContext[User]) -> Done:
    ctx.set_state({"account": ctx.input.email})
    return Done(done=True)


@step(input=User, output=Done)
async def assign_manager(ctx: StepContext[User]) -> Done:
    return Done(done=True)


class Setup(BaseModel):
    send_welcome: Done
    create_account: Done


@step(input=Setup, output=User)
async def reload_user(ctx: StepContext[Setup]) -> User:
    return User.model_validate(ctx.get_init_data())


onboarding = (
    Workflow("onboarding", input=User, output=dict, description="Parallel setup, then a branch.")
    .parallel([send_welcome, create_account])
    .then(reload_user)
    .branch([(lambda c: c.input["plan"] == "enterprise", assign_manager)])
    .commit()
)


class Request(BaseModel):
    item: str
    amount: float


class Decision(BaseModel):
    approved: bool
    reviewer: str = "unknown"


class Outcome(BaseModel):
    item: str
    approved: bool
    reviewer: str


@step(input=Request, output=Outcome, resume=Decision, suspend=Request)
async def review(ctx: StepContext[Request]) -> Outcome:
    """Waits for a human decision (resume with {"approved": bool, "reviewer": str})."""
    if ctx.resume_data is None:
        ctx.suspend(ctx.input, label="review")
    decision = Decision.model_validate(ctx.resume_data)
    return Outcome(item=ctx.input.item, approved=decision.approved, reviewer=decision.reviewer)


approval = (
    Workflow(
        "approval",
        input=Request,
        output=Outcome,
        description="Suspends until a reviewer resumes it.",
    )
    .then(review)
    .commit()
)


# Sample runs that `stepline serve --example-runs` (as `scripts/serve.sh` runs it) starts on an
# empty store, so the console has something to show: finished, suspended and branching runs.
EXAMPLE_RUNS = [
    ("greet", {"name": "Ada"}),
    ("greet", {"name": "Grace"}),
    ("onboarding", {"email": "lin@example.com", "plan": "enterprise"}),
    ("onboarding", {"email": "sam@example.com"}),
    ("approval", {"item": "laptop", "amount": 1200}),
]
