-- The decontamination guards, after those of guards.sql (run only when decontam.drop_contaminated or
-- decontam.drop_near_duplicates is on, so a selection without them keeps its views and its config hash):
--   contaminated:   a row whose prompt + completion shares an n-gram of $n words with an evaluation text
--   near_duplicate: a completion whose word shingles ($shingle words) have a Jaccard similarity of at least
--                   $threshold with those of a better-ranked completion of the same prompt still standing
-- Text is normalised first: lower-cased, every run of characters that are not letters or digits made one space,
-- trimmed, split into words. N-grams and shingles are compared by their 64-bit hash.
-- Reads guarded (from guards.sql) and eval_texts (registered from Python: source, text). Renames guarded to
-- guarded_before_decontam and defines guarded again with the two guards; guarded_candidates reads the new one.

set variable drop_contaminated = $drop_contaminated;
set variable drop_near_duplicates = $drop_near_duplicates;

create or replace temp macro text_words(t) as
    string_split(trim(regexp_replace(lower(coalesce(t, '')), '[^\pL\pN]+', ' ', 'g')), ' ');

-- N-grams are taken by unnesting their start positions, range(1, words - n + 2), and slicing: a list comprehension
-- over the words costs twenty times as much in DuckDB.

create or replace temp table eval_ngrams as
with eval_words as (
    select text_words(text) as w from eval_texts
),

starts as (
    select w, unnest(range(1, len(w) - $n + 2)) as i from eval_words where w <> ['']
),

final as (
    select distinct hash(array_to_string(w[i:i + $n - 1], ' ')) as gram_hash from starts
)

select * from final;

create or replace temp table contaminated_rows as
with pool_words as (
    select round, prompt_id, sample_idx, text_words(prompt || ' ' || completion) as w
    from guarded
    where getvariable('drop_contaminated')
),

starts as (
    select round, prompt_id, sample_idx, w, unnest(range(1, len(w) - $n + 2)) as i
    from pool_words
    where w <> ['']
),

final as (
    select distinct round, prompt_id, sample_idx
    from starts
    where hash(array_to_string(w[i:i + $n - 1], ' ')) in (select gram_hash from eval_ngrams)
)

select * from final;

create or replace temp table near_duplicate_rows as
with standing as (
    -- the rows no guard has dropped, ranked within their prompt: the better-ranked of two near-duplicates stays
    select
        round,
        prompt_id,
        sample_idx,
        completion,
        row_number() over (partition by prompt_id order by rank_key desc nulls last, round, sample_idx) as position
    from guarded
    anti join contaminated_rows using (round, prompt_id, sample_idx)
    where getvariable('drop_near_duplicates') and dropped_by is null
),

standing_words as (
    select prompt_id, position, text_words(completion) as w from standing
),

shingle_starts as (
    -- a completion of fewer words than a shingle is one shingle: start 1, its whole text
    select prompt_id, position, w, unnest(range(1, greatest(len(w) - $shingle + 2, 2))) as i
    from standing_words
    where w <> ['']
),

shingle_sets as (
    select distinct prompt_id, position, hash(array_to_string(w[i:i + $shingle - 1], ' ')) as shingle_hash
    from shingle_starts
),

sizes as (
    select prompt_id, position, count(*) as n_shingles from shingle_sets group by prompt_id, position
),

shared as (
    -- pairs of completions of one prompt that share a shingle, the better-ranked one as `earlier`
    select later.prompt_id, later.position, earlier.position as earlier_position, count(*) as n_shared
    from shingle_sets as later
    inner join shingle_sets as earlier
        on later.prompt_id = earlier.prompt_id
        and later.shingle_hash = earlier.shingle_hash
        and earlier.position < later.position
    group by later.prompt_id, later.position, earlier.position
),

similar_pairs as (
    select distinct shared.prompt_id, shared.position
    from shared
    inner join sizes as a on a.prompt_id = shared.prompt_id and a.position = shared.position
    inner join sizes as b on b.prompt_id = shared.prompt_id and b.position = shared.earlier_position
    where shared.n_shared / (a.n_shingles + b.n_shingles - shared.n_shared)::double >= $threshold
),

final as (
    select standing.round, standing.prompt_id, standing.sample_idx
    from standing
    semi join similar_pairs
        on standing.prompt_id = similar_pairs.prompt_id and standing.position = similar_pairs.position
)

select * from final;

alter view guarded rename to guarded_before_decontam;

create or replace temp view guarded as
with guarded_rows as (
    select * from guarded_before_decontam
),

marks as (
    select round, prompt_id, sample_idx, 'contaminated' as mark from contaminated_rows
    union all
    select round, prompt_id, sample_idx, 'near_duplicate' as mark from near_duplicate_rows
),

final as (
    select guarded_rows.* replace (coalesce(guarded_rows.dropped_by, marks.mark) as dropped_by)
    from guarded_rows
    left join marks
        on guarded_rows.round = marks.round
        and guarded_rows.prompt_id = marks.prompt_id
        and guarded_rows.sample_idx = marks.sample_idx
)

select * from final;
