"""The Gradio page: inputs, the generate queue, outputs.

Only layout and wiring live here; checks are in `validate`, sampling in
`request` (sample.py's code path). Every model call goes through one queue
with a concurrency limit of 1 (`concurrency_id="model"`), so one clip is
sampled at a time on the loaded model, whatever the number of visitors;
the others wait in the queue (at most `max_queue`) and see their position.
A refused input or a failed request shows one sentence in the status line
and the server keeps running.
"""

import logging
import random
import traceback

import gradio as gr

from idjax.app import folders as folders_lib
from idjax.app import heldout, layouts, request, validate
from idjax.config_rules import MAX_SEED
from idjax.configlib import UsageError

log = logging.getLogger("idjax.app")
TRAJECTORIES = layouts.PRESETS + (validate.TYPED,)
# System fonts: the default theme would fetch its fonts from the internet.
THEME = gr.themes.Default(
    font=("ui-sans-serif", "system-ui", "sans-serif"), font_mono=("ui-monospace", "monospace")
)
# A marker: Gradio gives each call its own tracker, following tqdm bars
# (the Generator's bar over denoising steps).
PROGRESS = gr.Progress(track_tqdm=True)
CSS = "#status { min-height: 2.5em; } #status p { font-size: 1.05em; }"


def _preset_texts(trajectory, index, count):
  """The start and end box text of a preset (None: leave the typed ones)."""
  if trajectory not in layouts.PRESETS or index >= count:
    return None
  start, end = layouts.preset_boxes(trajectory, index, count)
  return layouts.box_text(start), layouts.box_text(end)


def build(
    generator, workdir: str, folders: folders_lib.RequestFolders, max_queue: int = 16
) -> gr.Blocks:
  """The page for `generator` (loaded from `workdir`); request files go under `folders`."""
  config = generator.config
  defaults = config.sample
  limits = validate.Limits.for_model(
      generator.max_characters, generator.num_references, int(defaults.num_frames)
  )
  n_max = limits.max_characters
  refs_default = min(3, limits.max_references)

  with gr.Blocks(
      title="idjax: identity-consistent clips", analytics_enabled=False, delete_cache=(3600, 3600)
  ) as page:
    gr.Markdown(
        "## idjax: identity-consistent clips\n"
        f"Model `{workdir}`: {generator.resolution}x{generator.resolution} frames, up to "
        f"{n_max} character(s), {limits.max_references} reference image(s) each. "
        "Give each character reference images (or pick a held-out identity of the "
        "synthetic world) and a box trajectory, write a prompt, generate. One clip is made "
        "at a time; other requests wait in the queue."
    )
    with gr.Row():
      with gr.Column(scale=5):
        prompt = gr.Textbox(
            label="Prompt",
            placeholder="a person with pale skin and short black hair",
            elem_id="prompt",
        )
        # Hidden for a one-character model (a slider needs two ends).
        count = gr.Slider(
            1,
            max(n_max, 2),
            value=1,
            step=1,
            label="Characters",
            visible=n_max > 1,
            elem_id="count",
        )
        groups, chars, pick_inputs = [], [], []
        for i in range(n_max):
          with gr.Group(visible=i == 0) as group:
            gr.Markdown(f"**Character {i + 1}** ({request.character_name(i)})")
            files = gr.File(
                label=f"Reference images (1 to {limits.max_references})",
                file_count="multiple",
                elem_id=f"refs-{i}",
            )
            with gr.Row():
              index = gr.Number(
                  value=i,
                  precision=0,
                  minimum=0,
                  label="Held-out identity number",
                  elem_id=f"heldout-{i}",
              )
              pick = gr.Button("Pick a held-out identity", elem_id=f"pick-{i}")
            info = gr.Markdown(elem_id=f"info-{i}")
            start_text, end_text = _preset_texts("centre", i, i + 1) if i == 0 else ("", "")
            trajectory = gr.Dropdown(
                list(TRAJECTORIES),
                value="centre",
                label="Box trajectory",
                elem_id=f"trajectory-{i}",
            )
            with gr.Row():
              start = gr.Textbox(
                  value=start_text,
                  label="Start box: y0, x0, y1, x1 (fractions)",
                  elem_id=f"start-{i}",
              )
              end = gr.Textbox(
                  value=end_text,
                  label="End box (empty: the start box throughout)",
                  elem_id=f"end-{i}",
              )
          groups.append(group)
          chars.append((files, trajectory, start, end))
          pick_inputs.append((index, pick, info))
        with gr.Accordion("Settings", open=True):
          strength = gr.Slider(
              0,
              1,
              value=float(defaults.identity_strength),
              step=0.05,
              label="Identity strength",
              elem_id="strength",
          )
          with gr.Row():
            text_guidance = gr.Slider(
                0,
                validate.MAX_GUIDANCE,
                value=float(defaults.text_guidance),
                step=0.1,
                label="Text guidance",
                elem_id="text-guidance",
            )
            identity_guidance = gr.Slider(
                0,
                validate.MAX_GUIDANCE,
                value=float(defaults.identity_guidance),
                step=0.1,
                label="Identity guidance",
                elem_id="identity-guidance",
            )
          with gr.Row():
            frames = gr.Slider(
                1,
                limits.max_frames,
                value=int(defaults.num_frames),
                step=1,
                label="Frames",
                elem_id="frames",
            )
            steps = gr.Slider(
                1,
                limits.max_steps,
                value=int(defaults.steps),
                step=1,
                label="Denoising steps",
                elem_id="steps",
            )
          with gr.Row():
            seed = gr.Number(
                value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="seed"
            )
            randomise = gr.Button("Randomise seed", elem_id="randomise")
        go = gr.Button("Generate", variant="primary", elem_id="generate")
      with gr.Column(scale=6):
        status = gr.Markdown(elem_id="status")
        video = gr.Video(label="Clip (MP4)", autoplay=True, loop=True, height=360, elem_id="video")
        sheet = gr.Image(
            label="Contact sheet: references, then every frame", type="filepath", elem_id="sheet"
        )
        plot = gr.Image(
            label="FaceSim per frame, per character",
            type="filepath",
            show_label=False,
            elem_id="facesim",
        )
        report = gr.File(label="sample.py's JSON", elem_id="json")
        command = gr.Textbox(
            label="The same clip from the command line",
            lines=3,
            elem_id="command",
            buttons=["copy"],
        )

    # --- wiring ------------------------------------------------------------

    char_boxes = [c for (_, trajectory, start, end) in chars for c in (trajectory, start, end)]

    def on_count(n, *values):
      n = int(n)
      out = [gr.update(visible=i < n) for i in range(n_max)]
      for i in range(n_max):
        texts = _preset_texts(values[3 * i], i, n)
        out += [gr.update()] * 2 if texts is None else [gr.update(value=t) for t in texts]
      return out

    count.change(
        on_count,
        [count] + char_boxes,
        groups + [t for (_, _, start, end) in chars for t in (start, end)],
        queue=False,
    )

    for i, (files, trajectory, start, end) in enumerate(chars):

      def on_trajectory(choice, n, i=i):
        texts = _preset_texts(choice, i, int(n))
        return (gr.update(), gr.update()) if texts is None else texts

      trajectory.input(on_trajectory, [trajectory, count], [start, end], queue=False)
      # Typing a box switches the trajectory to the typed boxes.
      for box in (start, end):
        box.input(lambda: validate.TYPED, None, trajectory, queue=False)

      index, pick, info = pick_inputs[i]

      def on_pick(number, n, text, i=i):
        try:
          paths, described, identity = heldout.pick(number, refs_default, folders.new("heldout"))
        except validate.InputError as e:
          return gr.update(), f"Error: {e}", gr.update(), f"Error: {e}"
        note = f"Held-out identity {identity} (example {int(number)}): {described}."
        new_prompt = described if int(n) == 1 or not str(text or "").strip() else gr.update()
        return paths, note, new_prompt, ""

      pick.click(
          on_pick, [index, count, prompt], [files, info, prompt, status], concurrency_limit=4
      )

    randomise.click(lambda: random.SystemRandom().randint(0, 2**31 - 1), None, seed, queue=False)

    outputs = [status, video, sheet, plot, report, command]

    def refuse(message):
      return [f"Error: {message}", None, None, None, None, ""]

    form = [prompt, count, strength, text_guidance, identity_guidance, frames, steps, seed]
    form += [c for char in chars for c in char]

    # The inputs come as one dict (component -> value): the number of character
    # fields depends on the model. Gradio finds the progress tracker by its
    # default, a gr.Progress.
    def on_generate(values, progress=PROGRESS):
      try:
        n = validate.check_count(values[count], limits)
        characters = [
            validate.Character(
                tuple(values[files] or ()), values[trajectory], values[start], values[end]
            )
            for files, trajectory, start, end in chars[:n]
        ]
        progress(0, desc="checking the inputs")
        checked = validate.check_form(
            values[prompt],
            characters,
            values[strength],
            values[text_guidance],
            values[identity_guidance],
            values[frames],
            values[steps],
            values[seed],
            limits,
        )
      except validate.InputError as e:
        return refuse(e)
      folder = folders.new("request")
      progress(0, desc="reading the references")
      try:
        result = request.run(generator, workdir, checked, folder)
      except UsageError as e:  # what only the model can refuse (memory, references)
        return refuse(e)
      except Exception as e:  # a bug must not take the page down; the log has the details
        log.error("request in %s failed:\n%s", folder, traceback.format_exc())
        return refuse(f"generation failed ({type(e).__name__}); the server log has the details.")
      return [
          result.message(),
          result.video,
          result.sheet,
          result.plot,
          result.json,
          result.command,
      ]

    go.click(
        on_generate,
        set(form),
        outputs,
        concurrency_limit=1,
        concurrency_id="model",
        show_progress_on=[video],  # one bar, over the clip's place
    )
  page.queue(max_size=max_queue, default_concurrency_limit=1)
  return page
