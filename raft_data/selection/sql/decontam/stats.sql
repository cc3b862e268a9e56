-- The decontamination line of a round, for selected/manifest.json: the round's scored rows checked, those sharing an
-- n-gram with an evaluation text, the round's prompts whose text alone shares one, and the distinct evaluation
-- n-grams. Reads scored, contaminated_rows and eval_ngrams (decontam/guards.sql); $round is the round.

with round_rows as (
    select prompt_id, prompt from scored where round = $round
),

contaminated as (
    select prompt_id from contaminated_rows where round = $round
),

prompt_starts as (
    select prompt_id, w, unnest(range(1, len(w) - $n + 2)) as i
    from (select distinct prompt_id, text_words(prompt) as w from round_rows)
    where w <> ['']
),

contaminated_prompts as (
    select distinct prompt_id
    from prompt_starts
    where hash(array_to_string(w[i:i + $n - 1], ' ')) in (select gram_hash from eval_ngrams)
),

final as (
    select
        (select count(*) from round_rows) as checked_rows,
        (select count(*) from contaminated) as contaminated_rows,
        (select count(*) from contaminated_prompts) as contaminated_prompts,
        (select count(*) from eval_ngrams) as eval_ngrams
)

select * from final
