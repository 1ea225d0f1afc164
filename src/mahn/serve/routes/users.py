"""The dataset's users, for the page's 'start from a user'."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from mahn.serve.engine import Engine, engine, errors
from mahn.serve.schemas import MAX_SEARCH, ItemOut, UserHistory, UsersResponse

router = APIRouter()


@router.get("/users", response_model=UsersResponse, responses=errors(400))
def users(query: str = Query("", max_length=1000, description="Part of a user key (any case); empty: all."),
          limit: int = Query(20, ge=1, le=MAX_SEARCH), offset: int = Query(0, ge=0),
          served: Engine = Depends(engine)) -> UsersResponse:
    """Users of the run's dataset whose key contains the query, with their training history's length."""
    return UsersResponse(query=query, offset=offset, users=served.users.search(query, limit, offset))

@router.get("/users/{key:path}/history", response_model=UserHistory, responses=errors(404))
def user_history(key: str, served: Engine = Depends(engine)) -> UserHistory:
    """A user's training history (oldest first) and the items held out of training (validation, test)."""
    train, held_out = served.users.history(key)
    recommender = served.recommender
    keys, titles, images = recommender.keys, recommender.titles, recommender.images  # the dataset's come first

    def out(ids: list[int]) -> list[ItemOut]:
        return [ItemOut(key=keys[i], title=titles[i], image_url=served.image_url(keys[i], images[i]), added=False)
                for i in ids]

    return UserHistory(key=key, history=out(train), held_out=out(held_out))
