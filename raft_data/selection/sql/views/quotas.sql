-- Quotas after the strategy (select.task_quota, select.level_quota): at most `cap` selected rows of each task and
-- of each level, the rest dropped. A capped task or level keeps each prompt's best row first, then each prompt's
-- second best, and so on (by rank_key, then a hash of the prompt id), so a cap spreads over prompts before it
-- takes a second row of any; the task caps apply first, then the level caps.
-- Reads strategy_rows (the strategy's selection), quota_caps (kind, name, cap), samples and scored.

with chosen as (
    select strategy_rows.*, samples.task, samples.level, scored.rank_key
    from strategy_rows
    left join samples using (round, prompt_id, sample_idx)
    left join scored using (round, prompt_id, sample_idx)
),

ranked as (
    select
        *,
        row_number() over (partition by round, prompt_id order by rank_key desc, sample_idx) as nth_of_prompt
    from chosen
),

task_caps as (
    select name as task, cap as task_cap from quota_caps where kind = 'task'
),

within_task_caps as (
    select ranked.*
    from ranked
    left join task_caps using (task)
    qualify
        task_cap is null
        or row_number() over (
            partition by task order by nth_of_prompt, rank_key desc, md5(prompt_id), sample_idx
        ) <= task_cap
),

level_caps as (
    select name as level, cap as level_cap from quota_caps where kind = 'level'
),

final as (
    select within_task_caps.*
    from within_task_caps
    left join level_caps using (level)
    qualify
        level_cap is null
        or row_number() over (
            partition by level order by nth_of_prompt, rank_key desc, md5(prompt_id), sample_idx
        ) <= level_cap
)

select * exclude (task, level, rank_key, nth_of_prompt)
from final
order by prompt_id, sample_idx
