"""The review page (``facepipe.review``): the Starlette app, its token and Host checks, the HTML it serves, and
the server."""

from __future__ import annotations

import html
import json
import os
import secrets

from facepipe.common import FacepipeError
from facepipe.formats import UNKNOWN_CLUSTER, group_names
from facepipe.review import (
    ALLOWED_HOSTS,
    TOKEN_HEADER,
    ReviewSession,
    aggregate_file,
    apply_edit,
    face_file,
    review_session,
    undo,
)
from facepipe.settings import ReviewSettings
from facepipe.suggest import suggestions

FACES_SHOWN = 60  # a group's faces on the page, nearest its centroid first
SUGGESTIONS_SHOWN = 25  # of each kind, first ranks first
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}  # the token never leaves; no page frames it

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:8px 12px;z-index:1}
header button,header select{margin-right:6px}#message{color:#b00;margin-left:8px}
main{display:flex;gap:12px;padding:12px}#groups{flex:3}#queue{flex:1;min-width:280px}
.group{background:#fff;border:1px solid #ccc;border-radius:6px;margin-bottom:12px;padding:8px}
.group.chosen{outline:3px solid #06c}.group h2{font-size:16px;margin:0 0 6px}
.faces{display:flex;flex-wrap:wrap;gap:4px}.face{width:72px;height:72px;object-fit:cover;border:3px solid transparent;
cursor:pointer}.face.selected{border-color:#e60}.aggregate{width:96px;height:96px;float:right}
#queue li{background:#fff;border:1px solid #ccc;margin-bottom:6px;padding:6px;list-style:none}
.hint{width:48px;height:48px;object-fit:cover;float:left;margin-right:6px}#queue li.current{outline:3px solid #06c}
#queue ol{padding:0}kbd{background:#eee;padding:0 3px;border-radius:3px}
"""

SCRIPT = """
const TOKEN = document.body.dataset.token;
const say = text => { document.getElementById('message').textContent = text; };
async function post(path, body) {
  const answer = await fetch(path + '?token=' + encodeURIComponent(TOKEN), {method: 'POST',
    headers: {'Content-Type': 'application/json', 'X-Facepipe-Token': TOKEN}, body: JSON.stringify(body || {})});
  const data = await answer.json();
  if (!answer.ok) { say(data.error); return; }
  location.reload();
}
const selectedFaces = () => Array.from(document.querySelectorAll('.face.selected')).map(f => +f.dataset.row);
const chosenGroups = () => Array.from(document.querySelectorAll('.group.chosen')).map(g => +g.dataset.group);
document.querySelectorAll('.face').forEach(f => f.addEventListener('click', () => f.classList.toggle('selected')));
document.querySelectorAll('.choose').forEach(b => b.addEventListener('click', () =>
  b.closest('.group').classList.toggle('chosen')));
document.querySelectorAll('.name-form').forEach(form => form.addEventListener('submit', event => {
  event.preventDefault();
  post('/edit', {action: 'name', group: +form.dataset.group, name: form.elements.name.value});
}));
document.querySelectorAll('.not-person').forEach(b => b.addEventListener('click', () =>
  post('/edit', {action: 'not_a_person', group: +b.dataset.group})));
const merge = () => post('/edit', {action: 'merge', groups: chosenGroups()});
const split = () => post('/edit', {action: 'split', faces: selectedFaces()});
const move = () => post('/edit', {action: 'move', faces: selectedFaces(),
  group: +document.getElementById('move-to').value});
document.getElementById('merge').addEventListener('click', merge);
document.getElementById('split').addEventListener('click', split);
document.getElementById('move').addEventListener('click', move);
document.getElementById('undo').addEventListener('click', () => post('/undo'));
const items = Array.from(document.querySelectorAll('#queue li'));
let current = 0;
const show = i => { items.forEach(x => x.classList.remove('current'));
  if (items.length) { current = (i + items.length) % items.length; items[current].classList.add('current');
    items[current].scrollIntoView({block: 'nearest'}); } };
const answer = (item, action) => post('/edit', Object.assign({action: action}, JSON.parse(item.dataset.suggestion)));
items.forEach(item => { item.querySelector('.accept').addEventListener('click', () => answer(item, 'accept'));
  item.querySelector('.reject').addEventListener('click', () => answer(item, 'reject')); });
show(0);
document.addEventListener('keydown', event => {
  if (event.target.tagName === 'INPUT' || event.target.tagName === 'SELECT') return;
  const keys = {j: () => show(current + 1), k: () => show(current - 1), m: merge, s: split, v: move,
    u: () => post('/undo'), a: () => items.length && answer(items[current], 'accept'),
    r: () => items.length && answer(items[current], 'reject'),
    Escape: () => document.querySelectorAll('.selected,.chosen').forEach(
      x => x.classList.remove('selected', 'chosen'))};
  if (keys[event.key]) { event.preventDefault(); keys[event.key](); }
});
"""


def _url(session: ReviewSession, path: str) -> str:
    return html.escape(f"{path}?token={session.token}")


def _group_card(session: ReviewSession, group: int, members, name: str) -> str:
    """One group: its number and name (a form to change it), its CVAE face, its faces nearest its centroid first."""
    faces = "".join(
        f'<img class="face" data-row="{row}" alt="{html.escape(face)}" loading="lazy" '
        f'src="{_url(session, f"/face/{row}")}">'
        for row, face in zip(members.index[:FACES_SHOWN], members["name"][:FACES_SHOWN])
    )
    more = f"<p>and {len(members) - FACES_SHOWN} more</p>" if len(members) > FACES_SHOWN else ""
    if group == UNKNOWN_CLUSTER:
        return (
            f'<section class="group" id="group-unknown" data-group="-1"><h2>Unknown: {len(members)} face(s)'
            f'</h2><div class="faces">{faces}</div>{more}</section>'
        )
    aggregate = (
        f'<img class="aggregate" alt="group {group}: CVAE face" src="{_url(session, f"/aggregate/{group}")}">'
        if aggregate_file(session, group)
        else ""
    )
    return (
        f'<section class="group" id="group-{group}" data-group="{group}">{aggregate}'
        f"<h2>Group {group}{': ' + html.escape(name) if name else ''} ({len(members)} faces)</h2>"
        f'<form class="name-form" data-group="{group}"><input name="name" value="{html.escape(name)}" '
        f'placeholder="name" aria-label="name of group {group}"><button type="submit">Name</button>'
        f'<button type="button" class="choose">Choose for merge</button>'
        f'<button type="button" class="not-person" data-group="{group}">Not a person</button></form>'
        f'<div class="faces">{faces}</div>{more}</section>'
    )


def _suggestion_text(row, names: dict[int, str]) -> str:
    def group(number) -> str:
        number = int(number)
        return f"group {number}" + (f" ({names[number]})" if names.get(number) else "")

    if row["kind"] == "merge":
        return f"Are {group(row['group'])} and {group(row['other'])} one person?"
    if row["kind"] == "unknown":
        return f"Is this unknown face {group(row['group'])}?"
    return f"Is this face of {group(row['group'])} someone else?"


def _queue(session: ReviewSession, names: dict[int, str]) -> str:
    """The suggestions, SUGGESTIONS_SHOWN of each kind, each with accept and reject."""
    frame = suggestions(session.clustering, session.people())
    row_of = {name: row for row, name in enumerate(session.clustering.results["name"])}
    items = []
    for _, row in frame.groupby("kind", sort=False).head(SUGGESTIONS_SHOWN).iterrows():
        data = {
            "kind": row["kind"],
            "group": int(row["group"]),
            "other": None if row["kind"] != "merge" else int(row["other"]),
            "face": None if row["kind"] == "merge" else row["face"],
        }
        hint = (
            ""
            if row["kind"] == "merge"
            else (
                f'<img class="hint" alt="{html.escape(row["face"])}" src="{_url(session, f"/face/{row_of[row.face]}")}">'
            )
        )
        items.append(
            f'<li data-suggestion="{html.escape(json.dumps(data))}" class="{row["kind"]}">{hint}'
            f"{html.escape(_suggestion_text(row, names))} <small>distance {row['distance']:.3f}</small><br>"
            '<button class="accept">Accept <kbd>a</kbd></button> '
            '<button class="reject">Reject <kbd>r</kbd></button></li>'
        )
    return f'<aside id="queue"><h2>Suggestions</h2><ol>{"".join(items)}</ol></aside>'


def page(session: ReviewSession) -> str:
    """The whole review page."""
    results = session.clustering.results.sort_values(["cluster", "distance", "name"])
    names = group_names(session.folder)
    groups = [g for g in results["cluster"].unique().tolist() if g != UNKNOWN_CLUSTER]
    cards = [_group_card(session, g, results[results["cluster"] == g], names.get(g, "")) for g in groups]
    if (results["cluster"] == UNKNOWN_CLUSTER).any():
        cards.append(_group_card(session, UNKNOWN_CLUSTER, results[results["cluster"] == UNKNOWN_CLUSTER], ""))
    options = (
        "".join(
            f'<option value="{g}">group {g}{": " + html.escape(names[g]) if names.get(g) else ""}</option>'
            for g in groups
        )
        + f'<option value="{UNKNOWN_CLUSTER}">unknown</option>'
    )
    toolbar = (
        '<button id="merge">Merge chosen groups <kbd>m</kbd></button>'
        '<button id="split">Split off selected faces <kbd>s</kbd></button>'
        f'<button id="move">Move selected faces <kbd>v</kbd> to</button><select id="move-to">{options}</select>'
        '<button id="undo">Undo <kbd>u</kbd></button><span id="message"></span>'
        "<br><small>Click faces to select them; <kbd>j</kbd>/<kbd>k</kbd>: next/previous suggestion; "
        "<kbd>Esc</kbd>: clear the selection.</small>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>facepipe review</title>'
        '<link rel="icon" href="data:,">'
        f'<style>{STYLE}</style></head><body data-token="{html.escape(session.token)}" '
        f'data-edits="{len(session.earlier)}"><header><b>facepipe review</b> {html.escape(str(session.folder))}'
        f'<br>{toolbar}</header><main><div id="groups">{"".join(cards)}</div>{_queue(session, names)}</main>'
        f"<script>{SCRIPT}</script></body></html>"
    )


def review_app(session: ReviewSession):
    """The Starlette app of ``session``: the page, the faces, the CVAE faces, edits and undo."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    def token_given(request) -> bool:
        given = request.headers.get(TOKEN_HEADER) if request.method == "POST" else request.query_params.get("token")
        return secrets.compare_digest(str(given or ""), session.token)

    def checked(endpoint):
        async def guarded(request):
            if not token_given(request):
                return Response("forbidden: this page needs the token in the URL review printed", status_code=403)
            return await endpoint(request)

        return guarded

    async def show(request):
        return HTMLResponse(await run_in_threadpool(page, session), headers=PAGE_HEADERS)

    def image(find):
        async def serve(request):
            path = find(session, request.path_params["number"])
            return FileResponse(path) if path is not None else Response("not found", status_code=404)

        return serve

    def changes(action):
        async def change(request):
            try:
                body = await request.json() if await request.body() else {}
                if not isinstance(body, dict):
                    raise FacepipeError("an edit is a JSON object")
                await run_in_threadpool(action, body)
            except (FacepipeError, ValueError) as error:
                return JSONResponse({"error": str(error)}, status_code=400)
            return JSONResponse({"edits": len(session.earlier)})

        return change

    routes = [
        Route("/", checked(show)),
        Route("/face/{number:int}", checked(image(face_file))),
        Route("/aggregate/{number:int}", checked(image(aggregate_file))),
        Route("/edit", checked(changes(lambda body: apply_edit(body, session))), methods=["POST"]),
        Route("/undo", checked(changes(lambda body: undo(session))), methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=ALLOWED_HOSTS)])


def server_for(session: ReviewSession):
    """The uvicorn server of ``session``'s page (run it with ``.run(sockets=[listener])``)."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(review_app(session), log_level="warning", access_log=False))


def review(
    folder: str | os.PathLike, *, port: int = ReviewSettings.port, open_browser: bool = True, announce=print
) -> None:
    """Serve the review page of the clustering in ``folder`` (a cluster or run folder, or its
    cluster_results.csv) until interrupted; ``announce`` is given the page's URL."""
    with review_session(folder, port) as (session, listener, url):
        announce(url)
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        server_for(session).run(sockets=[listener])
