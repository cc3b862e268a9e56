-- cumulative: Llama 2's rejection sampling. For each prompt of this round keep the best candidate among the
-- samples of this round and of every earlier round of the experiment ($round = this round); ties go to the
-- earliest round, then the lowest sample_idx. The pool (views samples and scores) holds rounds 0..$round.
-- Reads the view candidates.

with candidate_rows as (
    select * from candidates
),

this_round_prompts as (
    select distinct prompt_id
    from samples
    where round = $round
),

pooled as (
    select candidate_rows.*
    from candidate_rows
    semi join this_round_prompts using (prompt_id)
),

best as (
    select *
    from pooled
    qualify row_number() over (partition by prompt_id order by rank_key desc, round, sample_idx) = 1
),

final as (
    select prompt_id, sample_idx, prompt, completion, reward, n_tokens, truncated, source, round
    from best
)

select * from final
order by prompt_id
