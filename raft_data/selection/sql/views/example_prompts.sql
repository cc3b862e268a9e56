-- For `raft-data inspect`: the first $n_prompts prompts of the round $round, by prompt_id, whose samples
-- examples.sql shows.

with round_samples as (
    select prompt_id from samples where round = $round
),

final as (
    select prompt_id
    from round_samples
    group by prompt_id
    order by prompt_id
    limit $n_prompts
)

select * from final
