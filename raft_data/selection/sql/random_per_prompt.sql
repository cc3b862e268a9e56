-- random_per_prompt: the baseline that shows ranking matters. For each prompt keep one candidate chosen by a
-- hash of (prompt_id, sample_idx), ignoring the reward: the same rows on every rerun, unrelated to quality.
-- Reads the view candidates.

with candidate_rows as (
    select * from candidates
),

picked as (
    select *
    from candidate_rows
    qualify row_number() over (partition by prompt_id order by hash(prompt_id, sample_idx), sample_idx) = 1
),

final as (
    select prompt_id, sample_idx, prompt, completion, reward, n_tokens, truncated, source, round
    from picked
)

select * from final
order by prompt_id
