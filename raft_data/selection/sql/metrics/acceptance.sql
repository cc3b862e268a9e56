-- Acceptance by level and by task: of the round's scored samples of each difficulty level (and of each task, with
-- prompts.task_column), how many the selection kept. One row per (kind, name): kind is level or task.
-- Reads the view scored, samples (for the task) and the registered table selected_rows (the selection about to be
-- published).
with round_samples as (
    select scored.level, samples.task, scored.prompt_id, scored.sample_idx
    from scored
    left join samples using (round, prompt_id, sample_idx)
    where scored.round = $r
),

kept as (
    select prompt_id, sample_idx, true as is_kept from selected_rows where round = $r
),

labelled as (
    select round_samples.level, round_samples.task, coalesce(kept.is_kept, false) as is_kept
    from round_samples
    left join kept using (prompt_id, sample_idx)
),

final as (
    select 'level' as kind, level as name, count(*) as n_samples, count_if(is_kept) as n_selected
    from labelled
    where level is not null
    group by level
    union all
    select 'task' as kind, task as name, count(*) as n_samples, count_if(is_kept) as n_selected
    from labelled
    where task is not null
    group by task
)

select * from final
order by kind, name
